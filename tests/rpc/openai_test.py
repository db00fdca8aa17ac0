"""The OpenAI-compatible HTTP API with real clients: the official `openai` Python package (pinned in
scripts/install-test-deps.sh) and curl, against `mpirun -np 2 tessera serve` on the CPU backend
with the embedded tiny model (Qwen3's real tokenizer and chat template, random weights: it
"thinks" by default and never closes the think block, so its text is reasoning).

Covers chat and completions, streaming (SSE framing by curl, include_usage), tools and
tool_choice (required and named functions enforced), n > 1 (the prompt computed once), logprobs,
--served-model-name and --log-requests, every error status (400 naming the field, 401, 404, 429,
503), disconnect mid-stream (the request is cancelled, its KV blocks freed), HTTP and gRPC giving the
same greedy output, the metrics (each request in exactly one of the success/error counters), and
/health + /metrics answering within 100 ms while 100 slow clients hold connections.

    python3 openai_test.py TESSERA_BINARY MPIRUN
"""

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import openai

TESSERA = None
MPIRUN = None
KEY = "sk-test-key"
MAX_QUEUE = 8


class Server:
    """`mpirun -np 2 tessera serve` on free ports; ports from --port-file."""

    def __init__(self, *extra):
        self.dir = tempfile.mkdtemp(prefix="openai-")
        port_file = os.path.join(self.dir, "port")
        self.log = open(os.path.join(self.dir, "serve.log"), "w+")
        env = dict(os.environ, OMP_NUM_THREADS="1", XDG_CACHE_HOME=os.path.join(self.dir, "c"))
        cmd = [MPIRUN, "--oversubscribe", "--allow-run-as-root", "--bind-to", "none", "-np", "2",
               TESSERA, "serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
               "--http-port", "0", "--port-file", port_file, "--api-key", KEY,
               "--max-queue", str(MAX_QUEUE), *extra]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 180
        while True:
            if os.path.exists(port_file):
                with open(port_file) as f:
                    fields = f.read().split()
                if len(fields) == 4:
                    break
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("tessera serve did not start:\n" + self.output())
            time.sleep(0.1)
        self.grpc_port, self.metrics_port, self.pid, self.http_port = map(int, fields)
        self.base = f"http://127.0.0.1:{self.http_port}"

    def output(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def client(self, key=KEY):
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0, timeout=120)

    def get(self, path, port=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.http_port, timeout=timeout)
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read().decode()
        conn.close()
        return r.status, body

    def metrics(self):
        status, body = self.get("/metrics")
        assert status == 200
        return body

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def sample(metrics, name, labels=None):
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in metrics.splitlines():
        m = re.match(r"^([a-z_:]+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in (labels or {}).items()):
            total += float(m.group(3))
    return total


def wait_idle(server, seconds=20):
    deadline = time.time() + seconds
    while time.time() < deadline:
        m = server.metrics()
        if (sample(m, "tessera:num_requests_running") == 0 and
                sample(m, "tessera:num_requests_waiting") == 0 and
                sample(m, "tessera:kv_cache_free_blocks") ==
                sample(m, "tessera:kv_cache_total_blocks")):
            return m
        time.sleep(0.05)
    raise AssertionError("the server did not go idle:\n" + server.metrics())


HELLO = [{"role": "user", "content": "Hello, who are you?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}},
         {"type": "function", "function": {
             "name": "get_time", "description": "The time in a city.",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


class OpenAITest(unittest.TestCase):
    server = None

    @classmethod
    def setUpClass(cls):
        cls.server = Server()
        cls.client = cls.server.client()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_models(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], ["tessera-tiny"])

    def test_chat_reasoning_and_content(self):
        r = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                max_tokens=8, temperature=0)
        self.assertTrue(r.id.startswith("chatcmpl-"))
        self.assertEqual(r.object, "chat.completion")
        choice = r.choices[0]
        self.assertEqual(choice.finish_reason, "length")
        # Thinking on (Qwen3's default): the tiny model never closes </think>.
        self.assertTrue(choice.message.reasoning_content)
        self.assertEqual(r.usage.completion_tokens, 8)
        self.assertGreater(r.usage.prompt_tokens, 5)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + 8)
        self.assertIsNotNone(r.usage.prompt_tokens_details.cached_tokens)
        # Thinking off: content. The same prompt again hits the prefix cache.
        kw = dict(model="tessera-tiny", messages=HELLO, max_completion_tokens=6, temperature=0,
                  extra_body={"chat_template_kwargs": {"enable_thinking": False}})
        first = self.client.chat.completions.create(**kw)
        again = self.client.chat.completions.create(**kw)
        self.assertTrue(first.choices[0].message.content)
        self.assertIsNone(getattr(first.choices[0].message, "reasoning_content", None))
        self.assertEqual(first.choices[0].message.content, again.choices[0].message.content)
        self.assertGreater(again.usage.prompt_tokens_details.cached_tokens, 0)
        # Content-part arrays are text.
        parts = [{"role": "user", "content": [{"type": "text", "text": "Hello, who are you?"}]}]
        r2 = self.client.chat.completions.create(model="tessera-tiny", messages=parts,
                                                 max_tokens=8, temperature=0)
        self.assertEqual(r2.choices[0].message.reasoning_content,
                         choice.message.reasoning_content)

    def test_streaming_equals_whole(self):
        whole = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                    max_tokens=12, temperature=0)
        stream = self.client.chat.completions.create(
            model="tessera-tiny", messages=HELLO, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True})
        reasoning, content, finish, usage, roles, ids = "", "", None, None, [], set()
        for chunk in stream:
            self.assertEqual(chunk.object, "chat.completion.chunk")
            ids.add(chunk.id)
            if chunk.usage is not None:
                self.assertEqual(chunk.choices, [])
                usage = chunk.usage
                continue
            delta = chunk.choices[0].delta
            if delta.role:
                roles.append(delta.role)
            reasoning += getattr(delta, "reasoning_content", None) or ""
            content += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        self.assertEqual(roles, ["assistant"])
        self.assertEqual(len(ids), 1)
        self.assertEqual(reasoning, whole.choices[0].message.reasoning_content)
        self.assertEqual(content, whole.choices[0].message.content)
        self.assertEqual(finish, "length")
        self.assertEqual(usage.completion_tokens, 12)
        self.assertEqual(usage.prompt_tokens, whole.usage.prompt_tokens)

    def test_completions(self):
        r = self.client.completions.create(model="tessera-tiny", prompt="The capital of France",
                                           max_tokens=5, temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertEqual(r.usage.completion_tokens, 5)
        ids = self.client.completions.create(model="tessera-tiny", prompt=[785, 6722, 315],
                                             max_tokens=5, temperature=0)
        self.assertEqual(ids.usage.prompt_tokens, 3)
        text = ""
        for chunk in self.client.completions.create(model="tessera-tiny", prompt=[785, 6722, 315],
                                                    max_tokens=5, temperature=0, stream=True):
            text += chunk.choices[0].text
        self.assertEqual(text, ids.choices[0].text)

    def test_logprobs(self):
        r = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                max_tokens=4, logprobs=True, top_logprobs=3)
        content = r.choices[0].logprobs.content
        self.assertEqual(len(content), 4)
        for lp in content:
            self.assertLessEqual(lp.logprob, 0.0)
            self.assertEqual(len(lp.top_logprobs), 3)
            self.assertTrue(lp.bytes)
        # Greedy: the chosen token is the most likely one.
        greedy = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                     max_tokens=4, logprobs=True, top_logprobs=2,
                                                     temperature=0)
        for lp in greedy.choices[0].logprobs.content:
            self.assertAlmostEqual(lp.logprob, lp.top_logprobs[0].logprob, places=4)
        c = self.client.completions.create(model="tessera-tiny", prompt="Hi", max_tokens=3,
                                           logprobs=2)
        self.assertEqual(len(c.choices[0].logprobs.tokens), 3)
        self.assertEqual(len(c.choices[0].logprobs.top_logprobs[0]), 2)

    def test_n(self):
        r = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                max_tokens=6, n=3, temperature=0)
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])
        texts = {c.message.reasoning_content for c in r.choices}
        self.assertEqual(len(texts), 1)  # greedy: all the same
        self.assertEqual(r.usage.completion_tokens, 18)
        sampled = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                      max_tokens=16, n=4, temperature=1.0,
                                                      seed=7)
        self.assertGreater(len({c.message.reasoning_content for c in sampled.choices}), 1)
        seen = set()
        for chunk in self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                         max_tokens=4, n=2, stream=True):
            for c in chunk.choices:
                if c.finish_reason:
                    seen.add(c.index)
        self.assertEqual(seen, {0, 1})

    def test_tools(self):
        def prompt_tokens(**kw):
            return self.client.chat.completions.create(
                model="tessera-tiny", messages=HELLO, max_tokens=2, **kw).usage.prompt_tokens

        plain = prompt_tokens()
        auto = prompt_tokens(tools=TOOLS)
        none = prompt_tokens(tools=TOOLS, tool_choice="none")
        self.assertGreater(auto, plain)  # the tools are in the prompt
        self.assertEqual(none, plain)
        # A named function: only it is shown, and the forced start of its call follows the
        # prompt; `required` with one tool is that tool named.
        weather = {"type": "function", "function": {"name": "get_weather"}}
        named = prompt_tokens(tools=TOOLS, tool_choice=weather)
        self.assertGreater(named, plain)
        self.assertEqual(prompt_tokens(tools=TOOLS[:1], tool_choice="required"), named)
        self.assertEqual(prompt_tokens(tools=TOOLS[:1], tool_choice=weather), named)
        # A conversation with a tool call and its result renders.
        history = HELLO + [
            {"role": "assistant", "content": None,
             "tool_calls": [{"id": "call_1", "type": "function",
                             "function": {"name": "get_weather",
                                          "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
        r = self.client.chat.completions.create(model="tessera-tiny", messages=history,
                                                tools=TOOLS, max_tokens=2)
        self.assertEqual(r.choices[0].finish_reason, "length")
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.chat.completions.create(
                model="tessera-tiny", messages=HELLO, tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "nope"}})
        self.assertEqual(e.exception.param, "tool_choice")

    def test_tool_choice_is_enforced(self):
        # A named function: the reply is a call of it, whatever the (random) model writes; its
        # arguments are the model's text verbatim (here likely not valid JSON); finish "stop" as
        # vLLM and OpenAI give for a named function.
        named = {"type": "function", "function": {"name": "get_time"}}
        r = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO, tools=TOOLS,
                                                tool_choice=named, max_tokens=8, n=2)
        for c in r.choices:
            self.assertEqual(len(c.message.tool_calls), 1)
            call = c.message.tool_calls[0]
            self.assertEqual(call.function.name, "get_time")
            self.assertTrue(call.id.startswith("call_"))
            self.assertIsInstance(call.function.arguments, str)
            self.assertIsNone(c.message.content)
            self.assertIn(c.finish_reason, ("stop", "length"))
        # Streamed: the head (id, name) first, then the arguments; the same as the whole reply.
        greedy = dict(model="tessera-tiny", messages=HELLO, tools=TOOLS, tool_choice=named,
                      max_tokens=8, temperature=0)
        whole = self.client.chat.completions.create(**greedy).choices[0]
        heads, args, finish = [], "", None
        for chunk in self.client.chat.completions.create(stream=True, **greedy):
            for c in chunk.choices:
                for t in c.delta.tool_calls or []:
                    if t.id:
                        heads.append((t.id, t.function.name))
                    args += t.function.arguments or ""
                finish = c.finish_reason or finish
        self.assertEqual([name for _, name in heads], ["get_time"])
        self.assertEqual(args, whole.message.tool_calls[0].function.arguments)
        self.assertEqual(finish, whole.finish_reason)
        # `required` with one tool is that function named; finish "tool_calls" (or "length").
        one = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                  tools=TOOLS[:1], tool_choice="required",
                                                  max_tokens=8)
        self.assertEqual(one.choices[0].message.tool_calls[0].function.name, "get_weather")
        self.assertIn(one.choices[0].finish_reason, ("tool_calls", "length"))
        # `required` among several: the model writes the name. A call of an offered function,
        # or (a random model) an error saying it called none of them.
        for seed in range(3):
            try:
                r = self.client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                        tools=TOOLS, tool_choice="required",
                                                        max_tokens=24, seed=seed)
                self.assertIn(r.choices[0].message.tool_calls[0].function.name,
                              ("get_weather", "get_time"))
            except openai.InternalServerError as e:
                self.assertEqual(e.status_code, 500)
                self.assertIn("tool_choice required", e.message)
        wait_idle(self.server)

    def test_n_computes_the_prompt_once(self):
        # A prompt no other test sends (nothing cached): n = 4 computes it once; the other three
        # take its full blocks from the prefix cache and compute only the last partial block.
        prompt = [785 + i for i in range(45)]  # 45 tokens: two full blocks of 16 and 13 more
        before = wait_idle(self.server)
        r = self.client.completions.create(model="tessera-tiny", prompt=prompt, max_tokens=6,
                                           n=4, temperature=1.0, seed=11)
        after = wait_idle(self.server)
        delta = lambda n: sample(after, n) - sample(before, n)
        self.assertEqual(delta("tessera:prompt_tokens_total"), 4 * 45)
        self.assertEqual(delta("tessera:prefix_cache_hit_tokens_total"), 3 * 32)
        # The same samples as four separate requests with seeds 11..14.
        prompt2 = [1785 + i for i in range(45)]
        grouped = self.client.completions.create(model="tessera-tiny", prompt=prompt2,
                                                 max_tokens=6, n=4, temperature=1.0, seed=11)
        for i, c in enumerate(grouped.choices):
            alone = self.client.completions.create(model="tessera-tiny", prompt=prompt2,
                                                   max_tokens=6, temperature=1.0, seed=11 + i)
            self.assertEqual(c.text, alone.choices[0].text, i)
        self.assertEqual(len(r.choices), 4)
        self.assertNotIn(" arrived (", self.server.output())  # request logs are opt-in

    def test_errors(self):
        c = self.client
        cases = [
            (dict(messages=HELLO, temperature="hot"), "temperature"),
            (dict(messages=[]), "messages"),
            (dict(messages=HELLO, max_tokens=0), "max_tokens"),
            (dict(messages=HELLO, n=0), "n"),
            (dict(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
             "messages[0].content[0].type"),
            (dict(messages=HELLO, top_p=7.0), "top_p"),
            (dict(messages=HELLO, max_tokens=100000), "max_tokens"),
        ]
        for kw, param in cases:
            with self.subTest(param=param), self.assertRaises(openai.BadRequestError) as e:
                c.chat.completions.create(model="tessera-tiny", **kw)
            self.assertEqual(e.exception.status_code, 400)
            self.assertEqual(e.exception.param, param, e.exception.message)
            self.assertEqual(e.exception.type, "invalid_request_error")
        with self.assertRaises(openai.BadRequestError) as e:
            c.completions.create(model="tessera-tiny", prompt=[10 ** 9], max_tokens=2)
        self.assertEqual(e.exception.param, "prompt")
        with self.assertRaises(openai.AuthenticationError) as e:
            self.server.client(key="wrong").chat.completions.create(model="tessera-tiny",
                                                                    messages=HELLO)
        self.assertEqual(e.exception.status_code, 401)
        with self.assertRaises(openai.AuthenticationError):
            self.server.client(key="wrong").models.list()
        with self.assertRaises(openai.NotFoundError) as e:
            c.chat.completions.create(model="gpt-4o", messages=HELLO)
        self.assertEqual(e.exception.code, "model_not_found")
        status, body = self.server.get("/v1/nothing")
        self.assertEqual(status, 404)
        self.assertIn("error", json.loads(body))
        # 429: more sequences than the queue holds (n engine requests).
        with self.assertRaises(openai.RateLimitError) as e:
            c.chat.completions.create(model="tessera-tiny", messages=HELLO, max_tokens=2,
                                      n=MAX_QUEUE + 1)
        self.assertEqual(e.exception.status_code, 429)
        wait_idle(self.server)

    def test_disconnect_mid_stream_cancels(self):
        before = self.server.metrics()
        stream = self.client.chat.completions.create(
            model="tessera-tiny", messages=HELLO, max_tokens=4000, stream=True,
            extra_body={"ignore_eos": True})
        got = 0
        for _ in stream:
            got += 1
            if got == 3:
                break
        stream.close()
        after = wait_idle(self.server)
        cancelled = {"finished_reason": "cancelled"}
        self.assertEqual(sample(after, "tessera:request_success_total", cancelled) -
                         sample(before, "tessera:request_success_total", cancelled), 1)
        self.assertLess(sample(after, "tessera:generation_tokens_total") -
                        sample(before, "tessera:generation_tokens_total"), 4000)

    def test_disconnect_while_waiting_for_whole_response(self):
        before = self.server.metrics()
        body = json.dumps({"model": "tessera-tiny", "messages": HELLO, "max_tokens": 4000,
                           "ignore_eos": True})
        s = socket.create_connection(("127.0.0.1", self.server.http_port))
        s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                   f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n{body}").encode())
        deadline = time.time() + 30
        while sample(self.server.metrics(), "tessera:num_requests_running") == 0:
            self.assertLess(time.time(), deadline)
            time.sleep(0.02)
        s.close()
        after = wait_idle(self.server)
        cancelled = {"finished_reason": "cancelled"}
        self.assertEqual(sample(after, "tessera:request_success_total", cancelled) -
                         sample(before, "tessera:request_success_total", cancelled), 1)

    def test_curl_sse_framing(self):
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("no curl")
        body = json.dumps({"model": "tessera-tiny", "messages": HELLO, "max_tokens": 5,
                           "stream": True, "stream_options": {"include_usage": True}})
        out = subprocess.run(
            [curl, "-sS", "-N", "-D", "-", self.server.base + "/v1/chat/completions",
             "-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json",
             "-d", body], capture_output=True, check=True, timeout=60).stdout.decode()
        head, _, events = out.partition("\r\n\r\n")
        self.assertIn("200", head.splitlines()[0])
        self.assertRegex(head, r"(?i)content-type: text/event-stream")
        self.assertTrue(events.endswith("data: [DONE]\n\n"), events[-200:])
        blocks = events.split("\n\n")[:-1]
        self.assertEqual(blocks[-1], "data: [DONE]")
        for block in blocks[:-1]:
            self.assertTrue(block.startswith("data: {"), block)
            self.assertNotIn("\n", block)
            json.loads(block[len("data: "):])
        self.assertIn("usage", json.loads(blocks[-2][len("data: "):]))

    def test_http_and_grpc_agree(self):
        client = [TESSERA, "client", "--address", f"127.0.0.1:{self.server.grpc_port}",
                  "--api-key", KEY]
        grpc = json.loads(subprocess.run(
            client + ["chat", "--user", "Hello, who are you?", "--max-tokens", "10",
                      "--temperature", "0", "--json"],
            capture_output=True, check=True, timeout=60).stdout)
        r = self.client.chat.completions.create(
            model="tessera-tiny", messages=[{"role": "user", "content": "Hello, who are you?"}],
            max_tokens=10, temperature=0)
        self.assertEqual(r.choices[0].message.reasoning_content or "", grpc["reasoning"])
        self.assertEqual(r.choices[0].message.content or "", grpc["text"])
        grpc = json.loads(subprocess.run(
            client + ["generate", "--prompt-ids", "785,6722,315", "--max-tokens", "10",
                      "--temperature", "0", "--json"],
            capture_output=True, check=True, timeout=60).stdout)
        c = self.client.completions.create(model="tessera-tiny", prompt=[785, 6722, 315],
                                           max_tokens=10, temperature=0)
        self.assertEqual(c.choices[0].text, grpc["text"])

    def test_each_request_in_exactly_one_counter(self):
        wait_idle(self.server)
        before = self.server.metrics()
        sent = 0
        for kw in [dict(max_tokens=2), dict(max_tokens=1), dict(max_tokens="x"),
                   dict(max_tokens=100000)]:
            sent += 1
            try:
                self.client.chat.completions.create(model="tessera-tiny", messages=HELLO, **kw)
            except openai.BadRequestError:
                pass
        after = wait_idle(self.server)
        ended = sum(sample(after, n) - sample(before, n)
                    for n in ["tessera:request_success_total", "tessera:request_errors_total"])
        self.assertEqual(ended, sent)
        self.assertEqual(sample(after, "tessera:request_errors_total",
                                {"code": "INVALID_ARGUMENT"}) -
                         sample(before, "tessera:request_errors_total",
                                {"code": "INVALID_ARGUMENT"}), 2)
        # Labels and configuration for routers and dashboards.
        self.assertIn('model_name="tessera-tiny"', after)
        info = [l for l in after.splitlines() if l.startswith("tessera:cache_config_info{")]
        self.assertEqual(len(info), 1)
        self.assertRegex(info[0], r'block_size="16".*num_gpu_blocks="\d+"')
        self.assertIn('tessera:e2e_request_latency_seconds_bucket{model_name="tessera-tiny",'
                      'le="7680"}', after)
        self.assertIn('tessera:time_to_first_token_seconds_bucket{model_name="tessera-tiny",'
                      'le="2560"}', after)
        # One inter-token sample per generated token after the first.
        self.assertEqual(sample(after, "tessera:inter_token_latency_seconds_count") -
                         sample(before, "tessera:inter_token_latency_seconds_count"), 1)

    def test_health_and_metrics_fast_while_slow_clients_hold_connections(self):
        slow = []
        try:
            for _ in range(100):
                s = socket.create_connection(("127.0.0.1", self.server.http_port))
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and no more
                slow.append(s)
            time.sleep(0.3)
            for port in [self.server.http_port, self.server.metrics_port]:
                for path in ["/health", "/metrics"]:
                    best = min(self.timed_get(port, path) for _ in range(3))
                    self.assertLess(best, 0.1, f"{path} on {port} took {best:.3f} s")
        finally:
            for s in slow:
                s.close()

    def timed_get(self, port, path):
        start = time.monotonic()
        status, _ = self.server.get(path, port=port, timeout=5)
        self.assertEqual(status, 200)
        return time.monotonic() - start


class OwnServerTest(unittest.TestCase):
    def test_tls(self):
        curl = shutil.which("curl")
        if curl is None:
            self.skipTest("no curl")
        tmp = tempfile.mkdtemp(prefix="openai-tls-")
        try:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days",
                            "1", "-subj", "/CN=localhost", "-addext",
                            "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out",
                            cert], check=True, capture_output=True)
            server = Server("--tls-cert", cert, "--tls-key", key)
            try:
                url = f"https://127.0.0.1:{server.http_port}/v1/models"
                out = subprocess.run([curl, "-sS", "--cacert", cert, url, "-H",
                                      f"Authorization: Bearer {KEY}"],
                                     capture_output=True, check=True, timeout=30).stdout
                self.assertEqual(json.loads(out)["data"][0]["id"], "tessera-tiny")
                plain = subprocess.run([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                        url.replace("https", "http")],
                                       capture_output=True, timeout=30)
                self.assertNotEqual(plain.stdout, b"200")
                # The metrics port stays plain HTTP for scrapers and probes.
                self.assertEqual(server.get("/health", port=server.metrics_port)[0], 200)
            finally:
                server.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_a_failed_rank_is_503(self):
        server = Server("--collective-timeout", "3")
        try:
            client = server.client()
            result = {}

            def whole():
                try:
                    client.chat.completions.create(model="tessera-tiny", messages=HELLO,
                                                   max_tokens=4000,
                                                   extra_body={"ignore_eos": True})
                except openai.APIStatusError as e:
                    result["status"] = e.status_code
                except openai.APIError as e:
                    result["error"] = repr(e)

            thread = threading.Thread(target=whole)
            thread.start()
            deadline = time.time() + 30
            while sample(server.metrics(), "tessera:num_requests_running") == 0:
                self.assertLess(time.time(), deadline)
                time.sleep(0.02)
            children = subprocess.run(["pgrep", "-P", str(server.proc.pid)], capture_output=True,
                                      text=True).stdout.split()
            rank1 = [int(p) for p in children if int(p) != server.pid]
            self.assertEqual(len(rank1), 1, children)
            os.kill(rank1[0], signal.SIGSTOP)  # hung: rank 0's watchdog fires
            thread.join(timeout=60)
            self.assertEqual(result, {"status": 503})
        finally:
            server.stop()

class ServeFlagsTest(unittest.TestCase):
    def test_served_model_name_and_request_logs(self):
        server = Server("--served-model-name", "my-model", "alias name", "--log-requests")
        try:
            client = server.client()
            self.assertEqual([m.id for m in client.models.list().data], ["my-model", "alias name"])
            for name in ("my-model", "alias name"):
                r = client.chat.completions.create(model=name, messages=HELLO, max_tokens=3,
                                                   temperature=0.5, seed=3)
                self.assertEqual(r.model, "my-model")  # the first name, as vLLM reports
            with self.assertRaises(openai.NotFoundError) as e:
                client.chat.completions.create(model="tessera-tiny", messages=HELLO, max_tokens=1)
            self.assertEqual(e.exception.code, "model_not_found")
            metrics = wait_idle(server)
            self.assertIn('model_name="my-model"', metrics)
            self.assertNotIn("tessera-tiny", metrics)
            info = subprocess.run([TESSERA, "client", "--address",
                                   f"127.0.0.1:{server.grpc_port}", "--api-key", KEY, "info"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout
            self.assertEqual(re.findall(r'served_model_names: "([^"]*)"', info),
                             ["my-model", "alias name"])
            subprocess.run([TESSERA, "client", "--address", f"127.0.0.1:{server.grpc_port}",
                            "--api-key", KEY, "generate", "--prompt-ids", "785,6722,315",
                            "--max-tokens", "2"], capture_output=True, check=True, timeout=60)
            # One line at arrival and one at the end per request, never the prompt's text.
            deadline = time.time() + 10
            while server.output().count(" finished: ") < 3 and time.time() < deadline:
                time.sleep(0.1)
            log = server.output()
            arrived = re.findall(r"request (\S+) arrived \((\w+)\): (\d+) prompt tokens, "
                                 r"max_tokens (\d+), temperature ([\d.]+).*seed (\w+)", log)
            finished = re.findall(r"request (\S+) finished: (\w+), (\d+) prompt tokens "
                                  r"\((\d+) cached\), (\d+) generated, TTFT ([\d.]+ s|none), "
                                  r"e2e ([\d.]+) s", log)
            self.assertEqual([a[1] for a in arrived], ["http", "http", "grpc"], log)
            self.assertEqual([a[3] for a in arrived], ["3", "3", "2"])
            self.assertEqual([a[4] for a in arrived][:2], ["0.5", "0.5"])
            self.assertEqual([a[5] for a in arrived], ["3", "3", "none"])
            self.assertEqual(sorted(f[0] for f in finished), sorted(a[0] for a in arrived))
            self.assertEqual([(f[1], f[4]) for f in finished],
                             [("length", "3"), ("length", "3"), ("length", "2")])
            self.assertTrue(all(f[5].endswith(" s") for f in finished))
            self.assertNotIn("who are you", log)  # no prompt text without --log-request-prompts
        finally:
            server.stop()

    def test_request_logs_with_prompts(self):
        alone = subprocess.run([TESSERA, "serve", "--log-request-prompts"], capture_output=True,
                               text=True, timeout=60)
        self.assertNotEqual(alone.returncode, 0)
        self.assertIn("--log-request-prompts needs --log-requests", alone.stderr)
        server = Server("--log-requests", "--log-request-prompts")
        try:
            server.client().completions.create(model="tessera-tiny", prompt='Say "hi"\n',
                                               max_tokens=2)
            wait_idle(server)
            self.assertIn('prompt "Say \\"hi\\"\\n"', server.output())  # escaped, one line
        finally:
            server.stop()


class DrainTest(unittest.TestCase):
    def test_draining_is_503(self):
        server = Server("--drain-timeout", "300")
        try:
            client = server.client()
            stream = client.chat.completions.create(
                model="tessera-tiny", messages=HELLO, max_tokens=1000, stream=True,
                extra_body={"ignore_eos": True})
            next(iter(stream))
            os.kill(server.pid, signal.SIGTERM)
            deadline = time.time() + 30
            while server.get("/health")[0] != 503:
                self.assertLess(time.time(), deadline)
                time.sleep(0.02)
            with self.assertRaises(openai.InternalServerError) as e:
                client.chat.completions.create(model="tessera-tiny", messages=HELLO, max_tokens=2)
            self.assertEqual(e.exception.status_code, 503)
            # The stream in flight finishes.
            finish = None
            for chunk in stream:
                for c in chunk.choices:
                    finish = c.finish_reason or finish
            self.assertEqual(finish, "length")
            self.assertEqual(server.proc.wait(timeout=120), 0)
        finally:
            server.stop()


if __name__ == "__main__":
    TESSERA, MPIRUN = sys.argv[1], sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
