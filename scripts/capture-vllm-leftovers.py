"""Capture vLLM 0.32's answers for the simulator's score/rerank, LoRA, structured-output, best_of, Responses
tools/store and reasoning tests (tests/sim/data/vllm-0.32-leftovers.json).

Run with the live tier's venv and model (see docs/live.md), one server at a time, e.g.:

    .live/venv/bin/python scripts/capture-vllm-leftovers.py adapter /tmp/cap/lora-a
    .live/venv/bin/python scripts/capture-vllm-leftovers.py think-model .live/tiny-llama /tmp/cap/think-llama
    # generate: VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 VLLM_ENABLE_RESPONSES_API_STORE=1 vllm serve .live/tiny-llama \
    #   --served-model-name tiny-llama --block-size 32 --max-model-len 2048 --enable-auto-tool-choice \
    #   --tool-call-parser hermes --enable-lora --max-loras 2 --max-lora-rank 8 --port 18761
    .live/venv/bin/python scripts/capture-vllm-leftovers.py gen http://127.0.0.1:18761 /tmp/cap/gen.json /tmp/cap/lora-a
    # pooling: the same model with --runner pooling --convert embed --port 18762
    .live/venv/bin/python scripts/capture-vllm-leftovers.py pool http://127.0.0.1:18762 /tmp/cap/pool.json
    # reasoning: /tmp/cap/think-llama with --reasoning-parser qwen3 --port 18763
    .live/venv/bin/python scripts/capture-vllm-leftovers.py think http://127.0.0.1:18763 /tmp/cap/think.json

(the servers as in scripts/test-live.sh: PYTHONHASHSEED=0 VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1
HF_HUB_OFFLINE=1). The three JSON files were merged into the data file under "generate" (the metrics body cut
to its vllm:lora_requests_info lines), "pooling" (its /tokenize counts under "pooling_tokenize") and
"reasoning".
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any


def make_adapter(out: str) -> None:
    """A rank-8 PEFT LoRA adapter on q_proj/v_proj of the tiny Llama, random weights."""
    import os

    import torch
    from safetensors.torch import save_file

    os.makedirs(out, exist_ok=True)
    r, h = 8, 128
    g = torch.Generator().manual_seed(0)
    w = {}
    for layer in range(2):
        for mod in ("q_proj", "v_proj"):
            base = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
            w[f"{base}.lora_A.weight"] = torch.randn(r, h, generator=g) * 0.01
            w[f"{base}.lora_B.weight"] = torch.randn(h, r, generator=g) * 0.01
    save_file(w, f"{out}/adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
              "bias": "none", "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "fan_in_fan_out": False,
              "modules_to_save": None}
    with open(f"{out}/adapter_config.json", "w") as f:
        json.dump(config, f)


def make_think_model(src: str, dst: str) -> None:
    """The tiny model plus two added tokens <think> (2048) and </think> (2049), embedding padded."""
    import os
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    os.makedirs(dst, exist_ok=True)
    for name in ("generation_config.json", "special_tokens_map.json"):
        shutil.copy(f"{src}/{name}", f"{dst}/{name}")
    w = load_file(f"{src}/model.safetensors")
    emb = w["model.embed_tokens.weight"]
    w["model.embed_tokens.weight"] = torch.cat([emb, torch.randn(2, emb.shape[1]) * 0.02])
    save_file(w, f"{dst}/model.safetensors")
    with open(f"{src}/config.json") as f:
        cfg = json.load(f)
    cfg["vocab_size"] = 2050
    with open(f"{dst}/config.json", "w") as f:
        json.dump(cfg, f, indent=1)
    added = [(2048, "<think>"), (2049, "</think>")]
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": False}
    with open(f"{src}/tokenizer.json") as f:
        tok = json.load(f)
    tok["added_tokens"] += [{"id": i, "content": t, **flags} for i, t in added]
    with open(f"{dst}/tokenizer.json", "w") as f:
        json.dump(tok, f)
    with open(f"{src}/tokenizer_config.json") as f:
        tc = json.load(f)
    tc.setdefault("added_tokens_decoder", {}).update({str(i): {"content": t, **flags} for i, t in added})
    with open(f"{dst}/tokenizer_config.json", "w") as f:
        json.dump(tc, f, indent=1)


def main() -> None:
    which = sys.argv[1]
    if which == "adapter":
        make_adapter(sys.argv[2])
        return
    if which == "think-model":
        make_think_model(sys.argv[2], sys.argv[3])
        return
    BASE, OUT = sys.argv[2], sys.argv[3]
    ADAPTER = sys.argv[4] if len(sys.argv) > 4 else ""
    res: dict[str, Any] = {}

    def call(name: str, method: str, path: str, body: Any = None, raw: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(BASE + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, ctype, text = r.status, r.headers.get("content-type"), r.read().decode()
        except urllib.error.HTTPError as e:
            status, ctype, text = e.code, e.headers.get("content-type"), e.read().decode()
        parsed: Any = text
        if not raw:
            try:
                parsed = json.loads(text)
            except ValueError:
                pass
        res[name] = {"request": {"method": method, "path": path, "body": body}, "status": status,
                     "content_type": ctype, "body": parsed}
        print(name, status, str(parsed)[:200], flush=True)
        return parsed

    M = "tiny-llama"
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    if which == "gen":
        # best_of / n
        call("completions_best_of", "POST", "/v1/completions", {"model": M, "prompt": "Hello there", "max_tokens": 4, "best_of": 3, "seed": 1})
        call("completions_best_of_lt_n", "POST", "/v1/completions", {"model": M, "prompt": "Hello there", "max_tokens": 4, "n": 3, "best_of": 2})
        call("completions_best_of_stream", "POST", "/v1/completions", {"model": M, "prompt": "Hello there", "max_tokens": 2, "best_of": 2, "stream": True})
        call("completions_n3_seed", "POST", "/v1/completions", {"model": M, "prompt": "Hello there", "max_tokens": 6, "n": 3, "seed": 7, "ignore_eos": True})
        call("completions_n3_seed_again", "POST", "/v1/completions", {"model": M, "prompt": "Hello there", "max_tokens": 6, "n": 3, "seed": 7, "ignore_eos": True})
        call("chat_best_of", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 4, "best_of": 2})
        # structured outputs
        call("so_regex", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 40, "structured_outputs": {"regex": "[a-z]{3}-[0-9]{2}"}})
        call("so_regex_completion", "POST", "/v1/completions", {"model": M, "prompt": "Code:", "max_tokens": 40, "structured_outputs": {"regex": "(yes|no)"}})
        call("so_regex_bad", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"regex": "[a-z"}})
        g = 'root ::= "yes" | "no"'
        call("so_grammar_ebnf", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"grammar": g}})
        lark = 'start: "a" NUM\nNUM: /[0-9]+/'
        call("so_grammar_lark", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"grammar": lark}})
        call("so_grammar_bad", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"grammar": 'root ::= "yes" |'}})
        call("so_grammar_bad2", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"grammar": 'this is not a grammar'}})
        call("so_grammar_empty", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"grammar": '  '}})
        call("so_two_kinds", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"regex": "a", "choice": ["a"]}})
        call("so_none", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {}})
        call("so_structural_tag_bad", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 20, "structured_outputs": {"structural_tag": "nope"}})
        call("guided_regex_ignored", "POST", "/v1/chat/completions", {"model": M, "messages": msgs, "max_tokens": 8, "guided_regex": "[0-9]+", "ignore_eos": True})
        call("guided_grammar_bad_ignored", "POST", "/v1/completions", {"model": M, "prompt": "x", "max_tokens": 4, "guided_grammar": "not a grammar"})
        # LoRA
        call("models_before", "GET", "/v1/models")
        call("lora_load", "POST", "/v1/load_lora_adapter", {"lora_name": "ad-a", "lora_path": ADAPTER})
        call("lora_load_again", "POST", "/v1/load_lora_adapter", {"lora_name": "ad-a", "lora_path": ADAPTER})
        call("lora_load_inplace", "POST", "/v1/load_lora_adapter", {"lora_name": "ad-a", "lora_path": ADAPTER, "load_inplace": True})
        call("lora_load_base_name", "POST", "/v1/load_lora_adapter", {"lora_name": M, "lora_path": ADAPTER})
        call("lora_load_missing_path", "POST", "/v1/load_lora_adapter", {"lora_name": "ad-x", "lora_path": ADAPTER + "-nowhere"})
        call("lora_load_empty", "POST", "/v1/load_lora_adapter", {"lora_name": "", "lora_path": ""})
        call("lora_load_no_path", "POST", "/v1/load_lora_adapter", {"lora_name": "ad-y"})
        call("models_after_load", "GET", "/v1/models")
        call("lora_completion", "POST", "/v1/completions", {"model": "ad-a", "prompt": "Hello", "max_tokens": 4})
        call("metrics_after_lora", "GET", "/metrics")
        call("lora_unload", "POST", "/v1/unload_lora_adapter", {"lora_name": "ad-a"})
        call("lora_unload_again", "POST", "/v1/unload_lora_adapter", {"lora_name": "ad-a"})
        call("lora_unload_empty", "POST", "/v1/unload_lora_adapter", {"lora_name": ""})
        call("lora_unload_missing_field", "POST", "/v1/unload_lora_adapter", {})
        call("models_after_unload", "GET", "/v1/models")
        call("lora_completion_after_unload", "POST", "/v1/completions", {"model": "ad-a", "prompt": "Hello", "max_tokens": 4})
        # Responses with tools / store
        rt = [{"type": "function", "name": "weather", "description": "Weather for a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
        call("resp_tools_required", "POST", "/v1/responses", {"model": M, "input": "Weather in Paris?", "tools": rt, "tool_choice": "required", "max_output_tokens": 60})
        call("resp_tools_named", "POST", "/v1/responses", {"model": M, "input": "Weather in Paris?", "tools": rt, "tool_choice": {"type": "function", "name": "weather"}, "max_output_tokens": 60})
        call("resp_tools_auto", "POST", "/v1/responses", {"model": M, "input": "Weather in Paris?", "tools": rt, "tool_choice": "auto", "max_output_tokens": 20})
        call("resp_tools_none", "POST", "/v1/responses", {"model": M, "input": "Weather in Paris?", "tools": rt, "tool_choice": "none", "max_output_tokens": 8})
        first = call("resp_store_first", "POST", "/v1/responses", {"model": M, "input": "Remember the word kiwi.", "max_output_tokens": 8, "store": True})
        if isinstance(first, dict) and "id" in first:
            call("resp_store_get", "GET", f"/v1/responses/{first['id']}")
            call("resp_store_next", "POST", "/v1/responses", {"model": M, "input": "Which word?", "max_output_tokens": 8, "previous_response_id": first["id"]})
        call("resp_prev_unknown", "POST", "/v1/responses", {"model": M, "input": "x", "max_output_tokens": 4, "previous_response_id": "resp_doesnotexist"})
        call("resp_get_unknown", "GET", "/v1/responses/resp_doesnotexist")
        nostore = call("resp_store_false", "POST", "/v1/responses", {"model": M, "input": "x", "max_output_tokens": 4, "store": False})
        if isinstance(nostore, dict) and "id" in nostore:
            call("resp_store_false_get", "GET", f"/v1/responses/{nostore['id']}")
        fc = {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\": \"Paris\"}"}
        fco = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}
        call("resp_tool_result_input", "POST", "/v1/responses", {"model": M, "input": [{"role": "user", "content": "Weather?"}, fc, fco], "tools": rt, "tool_choice": "none", "max_output_tokens": 6})
        # streamed Responses with a tool call: raw SSE
        req = urllib.request.Request(BASE + "/v1/responses", data=json.dumps({"model": M, "input": "Weather in Paris?", "tools": rt, "tool_choice": "required", "max_output_tokens": 60, "stream": True}).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            res["resp_tools_required_stream"] = {"status": r.status, "body": r.read().decode()}
        print("stream done")
    elif which == "pool":
        call("embeddings", "POST", "/v1/embeddings", {"model": M, "input": "hello world"})
        for path in ("/score", "/v1/score"):
            call("score" + path.replace("/", "_"), "POST", path, {"model": M, "text_1": "What is the capital of France?", "text_2": ["Paris is the capital.", "Bananas are yellow."]})
        call("score_queries_documents", "POST", "/score", {"model": M, "queries": "capital of France", "documents": ["Paris", "Berlin", "Rome"]})
        call("score_data", "POST", "/score", {"model": M, "data_1": ["a", "b"], "data_2": ["c", "d"]})
        call("score_n_to_m", "POST", "/score", {"model": M, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]})
        call("score_empty", "POST", "/score", {"model": M, "text_1": [], "text_2": ["c"]})
        call("score_missing", "POST", "/score", {"model": M, "text_1": "a"})
        for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            call("rerank" + path.replace("/", "_"), "POST", path, {"model": M, "query": "capital of France", "documents": ["Paris is the capital.", "Bananas are yellow.", "France is in Europe."]})
        call("rerank_top_n", "POST", "/rerank", {"model": M, "query": "capital of France", "documents": ["Paris", "Bananas", "France"], "top_n": 2})
        call("rerank_top_n_big", "POST", "/rerank", {"model": M, "query": "q", "documents": ["x", "y"], "top_n": 5})
        call("rerank_top_n_negative", "POST", "/rerank", {"model": M, "query": "q", "documents": ["x"], "top_n": -1})
        call("rerank_no_documents", "POST", "/rerank", {"model": M, "query": "q", "documents": []})
        call("rerank_missing_query", "POST", "/rerank", {"model": M, "documents": ["x"]})
        call("rerank_unknown_model", "POST", "/rerank", {"model": "nope", "query": "q", "documents": ["x"]})
        call("rerank_no_model", "POST", "/rerank", {"query": "q", "documents": ["x"]})
        call("score_too_long", "POST", "/score", {"model": M, "text_1": "word " * 1500, "text_2": "x " * 800})
        for t in ["What is the capital of France?", "Paris is the capital.", "Bananas are yellow.", "capital of France", "Paris", "Berlin", "Rome", "a", "b", "c", "d", "e", "France is in Europe.", "q", "x", "y", "Bananas", "France"]:
            call("tok:" + t, "POST", "/tokenize", {"model": M, "prompt": t})
        call("chat_on_pooling", "POST", "/v1/chat/completions", {"model": M, "messages": msgs})
        call("models_pooling", "GET", "/v1/models")
    elif which == "think":
        ask = [{"role": "user", "content": "Why is the sky blue?"}]
        bias = {"2049": 6}
        call("chat_whole", "POST", "/v1/chat/completions", {"model": M, "messages": ask, "max_tokens": 16, "ignore_eos": True, "logit_bias": bias, "seed": 3})
        call("chat_whole_n2", "POST", "/v1/chat/completions", {"model": M, "messages": ask, "max_tokens": 16, "ignore_eos": True, "logit_bias": bias, "seed": 3, "n": 2})
        call("chat_hidden", "POST", "/v1/chat/completions", {"model": M, "messages": ask, "max_tokens": 16, "ignore_eos": True, "logit_bias": bias, "seed": 3, "include_reasoning": False})
        call("chat_no_end", "POST", "/v1/chat/completions", {"model": M, "messages": ask, "max_tokens": 8, "ignore_eos": True, "logit_bias": {"2049": -100}, "seed": 3})
        call("chat_stream", "POST", "/v1/chat/completions", {"model": M, "messages": ask, "max_tokens": 16, "ignore_eos": True, "logit_bias": bias, "seed": 3, "stream": True, "stream_options": {"include_usage": True}}, raw=True)
        call("chat_stream_hidden", "POST", "/v1/chat/completions", {"model": M, "messages": ask, "max_tokens": 16, "ignore_eos": True, "logit_bias": bias, "seed": 3, "stream": True, "stream_options": {"include_usage": True}, "include_reasoning": False}, raw=True)
        call("responses_whole", "POST", "/v1/responses", {"model": M, "input": "Why is the sky blue?", "max_output_tokens": 16})
        call("completions", "POST", "/v1/completions", {"model": M, "prompt": "Why", "max_tokens": 8, "ignore_eos": True, "logit_bias": bias, "seed": 3})
    with open(OUT, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
