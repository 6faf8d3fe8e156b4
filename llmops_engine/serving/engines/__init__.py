"""Serving engines: what turns a rendered prompt into answer text, as it is generated.

    transformers  the default: the model in this replica, decoded with continuous batching
                  (decoding.py: new requests join between decode steps)
    llama-cpp     a TuningJob's GGUF export in llama.cpp, on CPU (llama_cpp.py; the optional
                  `llama-cpp` extra, because llama-cpp-python builds from source)
    vllm          a TuningJob's merged export on a GPU, through Ray Serve LLM (vllm.py)

Every engine streams the same events, so the slot, the ingress and with them the OpenAI API,
keys, guardrails, metrics and logs are the same on each:

    {"text": str}     new answer text: never half a UTF-8 character, never part of a stop string
    {"done": {"text", "prompt_tokens", "completion_tokens", "finish_reason"}}   the whole answer, last

An engine object has `count_tokens(text) -> int`, `stream(prompt, params, stops)` (an async
iterator of those events; closing it early cancels the generation), `info() -> dict` and
`close()`. `params` are the slot's generation settings: max_new_tokens, do_sample,
temperature, top_p, seed.
"""

ENGINES = ("transformers", "llama-cpp", "vllm")
