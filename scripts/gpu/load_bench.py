# Helpers of load-bench.sh (the GPU machine's python, with torch, transformers and safetensors).
#   python3 load_bench.py write DIR   a Qwen3-14B-shaped bf16 checkpoint, random weights, written
#                                     by transformers' save_pretrained in 5 GB shards (6 files)
#   python3 load_bench.py hf DIR      time from_pretrained(DIR, dtype=bf16, device_map="cuda")
#   python3 load_bench.py evict DIR   drop DIR's files from the page cache (POSIX_FADV_DONTNEED)
#   python3 load_bench.py cached DIR  how much of DIR's files the page cache holds
import glob, os, resource, sys, time


def files(d):
    return sorted(glob.glob(os.path.join(d, "*.safetensors")))


def write(d):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    # Qwen3-14B's config.json (hidden 5120, 40 layers, 40 q / 8 kv heads of 128, MLP 17408).
    config = Qwen3Config(vocab_size=151936, hidden_size=5120, intermediate_size=17408,
                         num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=8,
                         head_dim=128, max_position_embeddings=40960, rms_norm_eps=1e-6,
                         rope_theta=1000000.0, tie_word_embeddings=False, bos_token_id=151643,
                         eos_token_id=151645)
    t = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):  # random init on the GPU: seconds, not minutes
        model = Qwen3ForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    print(f"[write] {n / 1e9:.2f} B parameters initialised in {time.time() - t:.1f} s", flush=True)
    t = time.time()
    model.save_pretrained(d, max_shard_size="5GB")
    os.sync()
    size = sum(os.path.getsize(f) for f in files(d))
    print(f"[write] {len(files(d))} shards, {size / 1e9:.2f} GB written in {time.time() - t:.1f} s",
          flush=True)


def hf(d):
    import torch
    from transformers import AutoModelForCausalLM
    torch.zeros(1, device="cuda")  # CUDA context outside the timing, as tessera's is
    torch.cuda.synchronize()
    how = 'from_pretrained(device_map="cuda")'
    t = time.time()
    try:
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16, device_map="cuda")
    except (ImportError, ValueError) as e:  # device_map wants accelerate in transformers 4.x
        print(f"[hf] device_map=\"cuda\" failed ({e}); timing from_pretrained().to(\"cuda\")",
              flush=True)
        how = 'from_pretrained().to("cuda")'
        t = time.time()
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).to("cuda")
    torch.cuda.synchronize()
    s = time.time() - t
    size = sum(os.path.getsize(f) for f in files(d))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"[hf] {how} loaded {size / 1e9:.2f} GB in {s:.2f} s ({size / 1e9 / s:.2f} GB/s), "
          f"peak host memory {peak:.1f} MiB", flush=True)
    del model


def evict(d):
    os.sync()
    for f in files(d):
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    cached(d)


def cached(d):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = os.sysconf("SC_PAGE_SIZE")
    total = resident = 0
    for f in files(d):
        size = os.path.getsize(f)
        total += size
        fd = os.open(f, os.O_RDONLY)
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED: no page is touched
        os.close(fd)
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        if libc.mincore(addr, size, vec) == 0:
            resident += sum(v & 1 for v in bytes(vec)) * page
        libc.munmap(addr, size)
    print(f"[cache] {min(resident, total) / 1e9:.2f} of {total / 1e9:.2f} GB in the page cache",
          flush=True)


if __name__ == "__main__":
    {"write": write, "hf": hf, "evict": evict, "cached": cached}[sys.argv[1]](sys.argv[2])
