"""python -m fastsat.write_beton: a dataset's official layout → X.beton + X.beton.json.

    python -m fastsat.write_beton --dataset digits --split train --out data/digits_train.beton
    python -m fastsat.write_beton --dataset tiny-imagenet --root ~/data --split val --out val.beton
    python -m fastsat.write_beton --dataset cifar10 --root ~/data --out c10.beton \\
        --saliency gbp --teacher runs/teacher/checkpoint.pt --saliency2 gradcam_pp_box

Weak saliency (Eq. 10: ``bbox``, ``mask``) comes from the layout; teacher saliency is computed in
chunks of ``--chunk`` samples on ``--device``, each chunk packed at once and kept in ``OUT.chunks/``
until the beton is published, so memory does not grow with the split and the same command, run
again after a kill or Ctrl-C, goes on from the finished chunks. Under torchrun the ranks share the
chunks (one device each on GPUs) and rank 0 writes the beton, identical to one process's:

    torchrun --standalone --nproc_per_node 8 -m fastsat.write_beton --dataset folder --root ~/imagenet/train \\
        --side 224 --out in1k_train.beton --saliency gbp --teacher runs/teacher/best.pt --device cuda

Two maps of different granularity are both stored per element, so a per-sample coin can pick either
(Table 7).
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

import os
import shutil
import time
from pathlib import Path

from .beton import MAX_PAGE, WRITERS, SaliencyMap, file_hash, weak_map, write_beton
from .distributed import barrier, init_from_env, ranks
from .errors import ArgumentParser, InputError, run_cli
from .kernels import bits as bitlayout
from .runs import load_checkpoint, pick_device
from .saliency import SALIENCY
from .teacher_maps import CHUNK, ChunkedBits, chunk_folder, claim, compute_chunks, granularities, request, zero_counts
from .writers import LAYOUTS, OPTIONS, WEAK_KINDS, open_writer

def parser() -> ArgumentParser:

    ap = ArgumentParser(prog="python -m fastsat.write_beton", description=__doc__.splitlines()[0],
                        epilog="datasets: " + LAYOUTS.help() + ".\n\nteacher saliency methods: " + SALIENCY.help()
                        + ".")
    ap.add_argument("--dataset", required=True, choices=list(LAYOUTS), help="layout to read (see below)")
    ap.add_argument("--split", default="train", choices=sorted({s for lay in LAYOUTS.values() for s in lay.splits}),
                    help="split to write: " + "; ".join(f"{n}: {', '.join(lay.splits)}" for n, lay in LAYOUTS.items()))
    ap.add_argument("--out", type=Path, required=True, help="output .beton path (manifest goes to OUT.json)")
    ap.add_argument("--saliency", default="auto", metavar="METHOD",
                    help="none | auto (the layout's weak map) | bbox | mask | a teacher method (needs --teacher)")
    ap.add_argument("--teacher", type=Path, help="checkpoint of fastsat.train for teacher saliency")
    ap.add_argument("--saliency2", metavar="METHOD", help="a second map, field sal2 (teacher method or weak map)")
    ap.add_argument("--teacher2", type=Path, help="teacher of --saliency2 (default: --teacher)")
    ap.add_argument("--sal-param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of a teacher --saliency, repeatable: " + "; ".join(
                        f"{n}: {', '.join(f'{k}={p.default}' for k, p in e.params.items())}"
                        for n, e in SALIENCY.items() if e.params))
    ap.add_argument("--sal2-param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of a teacher --saliency2; repeatable")
    ap.add_argument("--sal-batch", type=int, default=256, help="teacher batch size")
    ap.add_argument("--chunk", type=int, default=CHUNK,
                    help="teacher maps are computed, packed and kept on disk (OUT.chunks/) this many samples at a "
                         "time, a multiple of --sal-batch: memory is bounded by it, and a killed job goes on from "
                         "its finished chunks when run again")
    ap.add_argument("--device", default="auto", help="device for teacher saliency: auto, cpu, cuda, cuda:N")
    for name, text in OPTIONS.items():
        kind = {"root": Path, "mask_root": Path, "side": int, "fold": int}.get(name, str)
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                        help=text + " (default: the layout's)",
                        **({"choices": ("skip", "keep")} if name == "missing_mask" else {}))
    ap.add_argument("--writer", choices=WRITERS, default="auto",
                    help="ffcv (parallel DatasetWriter), direct (one process, no ffcv needed; same content) "
                         "or auto (ffcv where installed)")
    ap.add_argument("--workers", type=int, default=-1, help="ffcv writer processes (-1: all cores)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return ap


def summary(info, verb: str = "Wrote") -> str:
    m = info.manifest
    h, w, c = m["image_shape"]
    sal = ", ".join(f"{name}: {v['nbytes']} B ({v['granularity']}, {v['source'].get('method')})"
                    for name, v in m["saliency"].items()) or "no saliency"
    notes = (" " + " ".join(m["notes"])) if m["notes"] else ""
    return (f"{verb} {info.path}: {m['num_samples']} samples of {m['dataset']}/{m['split']}, "
            f"{m['num_classes']} classes, images {h}x{w}x{c} ({h * w * c} B per sample, raw), {sal}; "
            f"file {m['file_size'] / 1e6:.1f} MB ({m['file_size'] / m['num_samples']:.0f} B per sample); "
            f"manifest {info.path}.json.{notes}")


def _params(pairs: list[str], flag: str) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _load_teacher(ckpt_path, source, device) -> dict:
    if ckpt_path is None:
        raise InputError("a teacher saliency method needs --teacher CKPT (a checkpoint of fastsat.train)")
    ckpt = load_checkpoint(ckpt_path, device)
    classes = ckpt["model_args"]["num_classes"]
    if classes != len(source.class_names):
        raise InputError(f"teacher {ckpt_path} has {classes} classes but {source.dataset} has {len(source.class_names)}")
    if ckpt["identity"]["dataset"] != source.dataset:
        raise InputError(f"teacher {ckpt_path} was trained on {ckpt['identity']['dataset']}, not {source.dataset}")
    return ckpt


def _plan(dataset: str, layout, source, requests) -> list[tuple[str, Path | None, dict]]:
    """(method, teacher, resolved params) per requested map — ``requests`` holds (method, teacher,
    params, params' flag) for ``sal`` then ``sal2`` — every choice checked before any work."""
    weak = ("none", *layout.weak)
    requests = [(source.saliency if m == "auto" else m, t, p, f) for m, t, p, f in requests if m is not None]
    if requests[0][0] == "none" and len(requests) > 1:
        raise InputError("--saliency2 needs a first saliency map")
    plan = []
    for method, teacher, params, flag in requests:
        if method not in weak and method not in SALIENCY:
            raise InputError(f"{dataset} has no {method!r} saliency (weak: {', '.join(weak)}; "
                             f"teacher: {', '.join(SALIENCY)})")
        if method in SALIENCY:
            needs = SALIENCY.get(method).needs_teacher
            if needs and teacher is None:
                raise InputError(f"--saliency {method} needs --teacher CKPT (a checkpoint of fastsat.train)")
            plan.append((method, Path(teacher) if needs else None, SALIENCY.get(method).resolve(params or {})))
        elif params:
            raise InputError(f"{flag} applies to teacher saliency methods, not to {method!r}")
        else:
            plan.append((method, None, {}))
    return plan


def _check_output(out: Path, overwrite: bool, sal_batch: int, chunk: int, workers: int, options: dict) -> None:
    """Everything about the request that can fail, before minutes of reading or saliency."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InputError(f"unknown layout options {unknown} (known: {', '.join(OPTIONS)})")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists (use --overwrite to replace it)")
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; name the .beton file to write")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist")
    side = options.get("side")
    if side is not None and 3 * side * side > MAX_PAGE:  # an RGB image and nothing else must fit a page
        raise InputError(f"--side {side}: one image would be {3 * side * side / 2**20:,.0f} MiB, beyond a beton "
                         f"page ({MAX_PAGE >> 20} MiB); at most --side {int((MAX_PAGE / 3) ** 0.5)}")
    if sal_batch < 1:
        raise InputError(f"--sal-batch must be >= 1, got {sal_batch}")
    if chunk < 1 or chunk % sal_batch:
        raise InputError(f"--chunk must be a positive multiple of --sal-batch ({sal_batch}), got {chunk}")
    if workers != -1 and not 1 <= workers <= (os.cpu_count() or 1):
        raise InputError(f"--workers must be -1 (all cores) or in [1, {os.cpu_count() or 1}], got {workers}")


def write_dataset(dataset: str, split: str, out, *, saliency: str = "auto", teacher=None, params: dict | None = None,
                  saliency2: str | None = None, teacher2=None, params2: dict | None = None, sal_batch: int = 256,
                  chunk: int = CHUNK, device: str = "auto", writer: str = "auto", workers: int = -1,
                  overwrite: bool = False, progress: bool = True, timings: dict | None = None, **options):
    """Write ``split`` of ``dataset``'s official layout to the beton ``out`` (and its manifest) with
    the requested maps — what ``python -m fastsat.write_beton`` does, each keyword its flag
    (``options``: the layout's ``root``, ``side``, ``fold``, ``missing_mask``, ``mask_root``).
    Teacher maps go through ``OUT.chunks/`` (``teacher_maps``), shared among the ranks of an
    initialised process group; ``timings``, if given, gets this process's seconds per stage (read,
    teacher, pack, store: of its chunks; write: of the beton). Returns the written beton's
    ``BetonInfo`` (None on ranks other than 0, which writes); bad requests raise ``InputError``
    before any work."""
    out, layout = Path(out), LAYOUTS.get(dataset)
    _check_output(out, overwrite, sal_batch, chunk, workers, options)
    samples = open_writer(dataset, split, **{k: options.get(k) for k in OPTIONS})
    source = samples.source
    plan = _plan(dataset, layout, source, [(saliency, teacher, params, "--sal-param"),
                                           (saliency2, teacher2 or teacher, params2, "--sal2-param")])
    device = pick_device(device)
    teachers = {t: _load_teacher(t, source, device) for _, t, _ in plan if t is not None}  # loaded once each
    write_args = {"overwrite": overwrite, "workers": workers, "writer": writer, "progress": progress}
    rank, world = ranks()
    if plan[0][0] == "none" or (len(plan) == 1 and plan[0][0] in WEAK_KINDS):  # read from the samples as written
        maps = {} if plan[0][0] == "none" else {"sal": weak_map(plan[0][0])}
        return write_beton(samples, source, out, maps=maps, **write_args) if rank == 0 else None
    hashes = {t: file_hash(t) for t in teachers}
    req = request(source, len(samples), plan, hashes, options, sal_batch, chunk, device)
    folder = chunk_folder(out)
    claim(folder, req)
    seconds = compute_chunks(samples, plan, teachers, req, folder, device, rank, world, progress)
    barrier()  # every chunk exists
    if rank > 0:
        return None
    t0 = time.perf_counter()
    info = write_beton(samples, source, out, maps=_chunked_maps(folder, req, source, plan, teachers, hashes),
                       **write_args)
    shutil.rmtree(folder)
    if timings is not None:
        timings.update(seconds, write=time.perf_counter() - t0)
    return info


def _chunked_maps(folder: Path, req: dict, source, plan, teachers: dict, hashes: dict) -> dict[str, SaliencyMap]:
    """The planned maps as fields read from the chunks, with their provenance (and notes on all-zero maps)."""
    maps = {}
    for name, (method, teacher, params), g, zeros in zip(("sal", "sal2"), plan, granularities(plan),
                                                         zero_counts(folder, req)):
        if method not in SALIENCY:
            info = {"method": method, "equation": "Eq. 10"}
        else:
            info = {"method": method, "params": params}
            if zeros:
                source.notes.append(f"{method}: {zeros} all-zero maps stored as all +1 (tie rule)")
        if teacher is not None:
            cfg = teachers[teacher]["config"]
            info.update(teacher=str(teacher), teacher_blake2b=hashes[teacher], teacher_model=cfg["model"],
                        teacher_width=cfg["width"], teacher_method=cfg["method"])
        bits = ChunkedBits(folder, f"sal{len(maps) + 1}", req, bitlayout.num_bytes(source.image_shape, g))
        maps[name] = SaliencyMap(g, info, bits)
    return maps


def write(args):
    """The parsed flags → ``write_dataset`` (under torchrun, on every rank: the teacher's chunks are shared)."""
    init_from_env(pick_device(args.device))
    return write_dataset(args.dataset, args.split, args.out, saliency=args.saliency, teacher=args.teacher,
                         params=_params(args.sal_param, "--sal-param"), saliency2=args.saliency2,
                         teacher2=args.teacher2, params2=_params(args.sal2_param, "--sal2-param"),
                         sal_batch=args.sal_batch, chunk=args.chunk, device=args.device, writer=args.writer,
                         workers=args.workers, overwrite=args.overwrite, **{k: getattr(args, k) for k in OPTIONS})


def main(argv=None) -> int:
    return run_cli(lambda: (lambda info: info and summary(info))(write(parser().parse_args(argv))))


if __name__ == "__main__":
    raise SystemExit(main())
