"""Engine throughput on a random-weight Llama-3-8B shape (bf16, one GPU), with the copy-bandwidth
roofline and HF transformers ``generate`` on the same weights, all in one run. Prints JSON lines.

    PYTHONPATH=packages/lorax-kernels/src:packages/lorax-engine/src \
        python3 packages/lorax-engine/benchmarks/bench_engine.py [--batches 1,16,64,256] [--hf] \
        [--kv-cache-dtype fp8]

Requests: random 512-token prompts, 256 new tokens, greedy, ignore_eos. Detokenization uses a
null tokenizer (the random model's ids have no text), so host-side text work is not counted.
"""

from __future__ import annotations

import argparse
import bisect
import json
import time

import torch

from lorax_engine.core.block_manager import BlockManager
from lorax_engine.core.engine_core import EngineCore
from lorax_engine.core.kv_cache import allocate_kv_cache
from lorax_engine.core.model_runner import ModelRunner
from lorax_engine.core.request import Request
from lorax_engine.core.scheduler import Scheduler, SchedulerConfig
from lorax_engine.models.loader import build_model, init_random_
from lorax_engine.models.model_config import ModelConfig, RopeConfig
from lorax_engine.params import SamplingParams
from lorax_kernels import pdl

LLAMA3_8B = ModelConfig(
    architecture="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    rms_norm_eps=1e-5,
    max_position_embeddings=8192,
    rope=RopeConfig(
        theta=500000.0, rope_type="llama3", factor=8.0, original_max_position_embeddings=8192
    ),
)
# The graph is timed alone after this many whole-batch decode steps (steady state, every
# sequence still running), then the run goes on.
REPLAY_AFTER_STEPS = 8


class NullTokenizer:
    all_special_ids: tuple[int, ...] = ()

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return ""


def emit(**kw: object) -> None:
    print(json.dumps(kw), flush=True)


def copy_bandwidth() -> float:
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 2 * x.numel() * 10 / (time.perf_counter() - t)
    del x, y
    return bw


def run_batch(
    core: EngineCore, batch: int, prompt_len: int, new_tokens: int, bw: float, wbytes: int
) -> None:
    cfg = LLAMA3_8B
    gen = torch.Generator().manual_seed(batch)
    done: list[int] = []
    for i in range(batch):
        ids = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=gen).tolist()
        req = Request(
            f"b{batch}-{i}",
            ids,
            SamplingParams(max_new_tokens=new_tokens, ignore_eos=True),
            time.monotonic(),
        )
        core.submit(req, lambda ev, d=done: d.append(1) if ev["type"] == "end" else None)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    decode_times: list[float] = []
    decode_ctx: list[float] = []
    first_token_at: float | None = None
    graph_ms: float | None = None
    while len(done) < batch:
        running = core.scheduler.running
        ctx_before = sum(r.num_tokens for r in running) / max(1, len(running))
        ts = time.perf_counter()
        core.step()
        dt = time.perf_counter() - ts
        if core.stats.batch_size == batch and core.stats.num_tokens == batch:
            decode_times.append(dt)
            decode_ctx.append(ctx_before)
            if len(decode_times) == REPLAY_AFTER_STEPS:
                # The whole batch decodes: the graph's inputs are live sequences mid-run.
                core.complete_inflight()
                graph_ms = replay_ms(core, batch)
        if first_token_at is None and core.stats.generated_tokens > 0:
            first_token_at = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    decode_times.sort()
    med = decode_times[len(decode_times) // 2] if decode_times else float("nan")
    ctx = sum(decode_ctx) / max(1, len(decode_ctx))
    itemsize = core.runner.kv_caches[0][0].element_size()  # 2 (bf16) or 1 (fp8)
    kv_bytes = batch * ctx * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * itemsize
    roof = (wbytes + kv_bytes) / bw
    emit(
        event="engine",
        batch=batch,
        input=prompt_len,
        output=new_tokens,
        wall_s=round(wall, 3),
        output_tok_s=round(batch * new_tokens / wall, 1),
        decode_steps=len(decode_times),
        decode_ms_p50=round(med * 1000, 3),
        decode_tok_s=round(batch / med, 1),
        mean_ctx=round(ctx, 1),
        roofline_ms=round(roof * 1000, 3),
        pct_roofline=round(100 * roof / med, 1),
        first_token_s=round(first_token_at or 0.0, 3),
        graph_replay_ms=graph_ms,
        graph_pct_roofline=round(100 * roof * 1000 / graph_ms, 1) if graph_ms else None,
    )


def replay_ms(core: EngineCore, batch: int) -> float | None:
    """GPU time of one decode step alone: replay the bucket's graph on the last step's inputs
    (call with no step in flight: each replay recomputes that step's KV writes and tokens)."""
    graphs = core.runner.graphs
    if graphs is None:
        return None
    key = (graphs.buckets[bisect.bisect_left(graphs.buckets, batch)], False)
    graph = graphs._graphs[key][0]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(20):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / 20, 3)


def hf_baseline(
    model_state: dict[str, torch.Tensor], batches: list[int], prompt_len: int, new_tokens: int
) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    )
    cfg._attn_implementation = "sdpa"
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        hf = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    # Share our weights (same values for both engines); the random init above is dropped.
    hf.load_state_dict(model_state, strict=False, assign=True)
    hf.eval()
    for b in batches:
        ids = torch.randint(0, cfg.vocab_size, (b, prompt_len), device="cuda")
        kw = {"do_sample": False, "pad_token_id": 0, "attention_mask": torch.ones_like(ids)}
        hf.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
        torch.cuda.synchronize()
        t = time.perf_counter()
        hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        emit(
            event="hf_generate",
            batch=b,
            input=prompt_len,
            output=new_tokens,
            output_tok_s=round(b * new_tokens / dt, 1),
            ms_per_step=round(dt / new_tokens * 1000, 2),
        )
    del hf


def to_hf_names(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Views of our fused weights under HF names (no copies), for the HF baseline."""
    cfg = LLAMA3_8B
    q, kv, inter = cfg.q_size, cfg.kv_size, cfg.intermediate_size
    p = dict(model.named_parameters())
    out = {
        "model.embed_tokens.weight": p["embed.weight"],
        "model.norm.weight": p["norm.weight"],
        "lm_head.weight": p["lm_head"],
    }
    for i in range(cfg.num_layers):
        qkv = p[f"layers.{i}.attn.qkv.weight"]
        gu = p[f"layers.{i}.mlp.gate_up.weight"]
        pre = f"model.layers.{i}."
        out |= {
            pre + "self_attn.q_proj.weight": qkv[:q],
            pre + "self_attn.k_proj.weight": qkv[q : q + kv],
            pre + "self_attn.v_proj.weight": qkv[q + kv :],
            pre + "self_attn.o_proj.weight": p[f"layers.{i}.attn.o.weight"],
            pre + "mlp.gate_proj.weight": gu[:inter],
            pre + "mlp.up_proj.weight": gu[inter:],
            pre + "mlp.down_proj.weight": p[f"layers.{i}.mlp.down.weight"],
            pre + "input_layernorm.weight": p[f"layers.{i}.input_norm.weight"],
            pre + "post_attention_layernorm.weight": p[f"layers.{i}.post_attn_norm.weight"],
        }
    return out


def add_no_pdl(ap: argparse.ArgumentParser) -> None:
    """``--no-pdl``: the plain-launch side of an A/B against the engine's default."""
    ap.add_argument(
        "--no-pdl",
        action="store_true",
        help="plain launches (without, decode kernels are PDL-launched where the GPU supports it,"
        " as the engine does: lorax_kernels.pdl)",
    )


def apply_no_pdl(args: argparse.Namespace) -> bool:
    """Switch ``lorax_kernels.pdl`` as ``--no-pdl`` says; returns whether PDL launches are on."""
    pdl.set_enabled(not args.no_pdl)
    return not args.no_pdl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--input", type=int, default=512)
    ap.add_argument("--output", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--prefill-tokens", type=int, default=8192)
    ap.add_argument("--eager", action="store_true")
    ap.add_argument(
        "--kv-cache-dtype",
        choices=["auto", "fp8"],
        default="auto",
        help="auto: bf16 KV cache; fp8: float8 e4m3 (scale 1.0), as lorax-engine serve's flag",
    )
    ap.add_argument(
        "--hf",
        default="",
        help="comma-separated batch sizes for HF generate (input/output as above)",
    )
    ap.add_argument("--hf-output", type=int, default=128)
    add_no_pdl(ap)
    args = ap.parse_args()
    pdl_on = apply_no_pdl(args)
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    bw = copy_bandwidth()
    emit(event="copy_bw_TBps", value=round(bw / 1e12, 3))
    emit(event="pdl", enabled=pdl_on)

    dev = torch.device("cuda")
    t = time.perf_counter()
    model = build_model(LLAMA3_8B, torch.bfloat16, dev, max_positions=args.input + args.output + 64)
    init_random_(model, seed=0)
    wbytes = sum(
        p.numel() * p.element_size() for n, p in model.named_parameters() if n != "embed.weight"
    )
    emit(event="init", s=round(time.perf_counter() - t, 1), weight_gb=round(wbytes / 1e9, 2))

    max_b = max(batches)
    total = args.input + args.output
    bs = args.block_size
    blocks = max_b * (-(-total // bs)) + 16
    kv_dtype = torch.float8_e4m3fn if args.kv_cache_dtype == "fp8" else torch.bfloat16
    emit(event="kv_cache", dtype=str(kv_dtype))
    kv = allocate_kv_cache(LLAMA3_8B, blocks, bs, kv_dtype, dev)
    t = time.perf_counter()
    runner = ModelRunner(
        model,
        kv,
        block_size=bs,
        max_num_seqs=max_b,
        max_num_tokens=args.prefill_tokens,
        max_blocks_per_seq=-(-total // bs),
        use_cuda_graphs=not args.eager,
    )
    runner.capture_graphs()
    emit(
        event="graphs",
        s=round(time.perf_counter() - t, 1),
        buckets=runner.graphs.buckets if runner.graphs else [],
    )
    sched = Scheduler(
        SchedulerConfig(max(args.prefill_tokens, max_b), max_b), BlockManager(blocks, bs)
    )
    core = EngineCore(sched, runner, NullTokenizer(), frozenset())
    run_batch(core, 1, 32, 8, bw, wbytes)  # warm-up (prefill shapes, sampler)
    for b in batches:
        run_batch(core, b, args.input, args.output, bw, wbytes)
    del core, runner, kv
    torch.cuda.empty_cache()
    if args.hf:
        hf_baseline(
            to_hf_names(model), [int(b) for b in args.hf.split(",")], args.input, args.hf_output
        )


if __name__ == "__main__":
    main()
