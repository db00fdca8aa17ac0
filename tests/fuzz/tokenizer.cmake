# The tokenizer's libFuzzer target. Included by tests/fuzz/CMakeLists.txt when TESSERA_FUZZ is ON
# (clang only):   include(${CMAKE_CURRENT_LIST_DIR}/tokenizer.cmake)
#
# The tokenizer sources are compiled again here, instrumented for coverage (fuzzer-no-link) and
# with ASan + UBSan, so that the fuzzer sees inside them whatever flags the rest of the build
# uses. Run:  build/tests/fuzz/tokenizer_fuzzer -max_total_time=60 -max_len=4096 CORPUS_DIR
set(_tessera_fuzz_flags -fsanitize=address,undefined -fno-sanitize-recover=undefined
                        -fno-omit-frame-pointer)

# The tokenizer's sources (and the UTF-8 module they use), as listed in runtime/text/CMakeLists.txt
# (relative there, or absolute).
get_target_property(_tessera_runtime_sources tessera_text SOURCES)
set(_tessera_tokenizer_sources)
foreach(_src IN LISTS _tessera_runtime_sources)
  if(_src MATCHES "(^|/)tokenizer/[^/]+\\.cc$" OR _src MATCHES "(^|/)utf8\\.cc$")
    if(NOT IS_ABSOLUTE "${_src}")
      set(_src "${PROJECT_SOURCE_DIR}/runtime/text/${_src}")
    endif()
    list(APPEND _tessera_tokenizer_sources "${_src}")
  endif()
endforeach()
add_library(tessera_tokenizer_fuzz STATIC
  ${_tessera_tokenizer_sources}
  ${PROJECT_SOURCE_DIR}/kernels/base/check.cc
)
target_include_directories(tessera_tokenizer_fuzz PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(tessera_tokenizer_fuzz PUBLIC
  nlohmann_json::nlohmann_json PkgConfig::PCRE2 ICU::uc
  absl::status absl::statusor absl::strings absl::str_format absl::flat_hash_map)
target_compile_options(tessera_tokenizer_fuzz PRIVATE ${_tessera_fuzz_flags}
                       -fsanitize=fuzzer-no-link)
tessera_target_defaults(tessera_tokenizer_fuzz)

add_executable(tokenizer_fuzzer ${CMAKE_CURRENT_LIST_DIR}/tokenizer_fuzzer.cc)
target_link_libraries(tokenizer_fuzzer PRIVATE tessera_tokenizer_fuzz)
target_compile_options(tokenizer_fuzzer PRIVATE ${_tessera_fuzz_flags} -fsanitize=fuzzer)
target_link_options(tokenizer_fuzzer PRIVATE ${_tessera_fuzz_flags} -fsanitize=fuzzer)
target_compile_definitions(tokenizer_fuzzer PRIVATE
  TESSERA_FUZZ_TOKENIZER_DIR="${PROJECT_SOURCE_DIR}/tests/data/qwen3/tokenizer-qwen3-0.6b")
tessera_target_defaults(tokenizer_fuzzer)

# Arbitrary bytes as a tokenizer.json: errors that name the file, or a tokenizer that works.
# Run:  build/tests/fuzz/tokenizer_files_fuzzer -max_total_time=60 CORPUS_DIR
#       (seed CORPUS_DIR with tests/runtime/text/tokenizer/flags_tokenizer.json)
add_executable(tokenizer_files_fuzzer ${CMAKE_CURRENT_LIST_DIR}/tokenizer_files_fuzzer.cc)
target_link_libraries(tokenizer_files_fuzzer PRIVATE tessera_tokenizer_fuzz)
target_compile_options(tokenizer_files_fuzzer PRIVATE ${_tessera_fuzz_flags} -fsanitize=fuzzer)
target_link_options(tokenizer_files_fuzzer PRIVATE ${_tessera_fuzz_flags} -fsanitize=fuzzer)
tessera_target_defaults(tokenizer_files_fuzzer)
