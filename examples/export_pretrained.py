"""Ship a run's best checkpoint as package data: ``gconv_ext/pretrained/<name>.pt`` plus its entry in
``gconv_ext/pretrained/manifest.json`` (SHA-256, model, train setting, measured test accuracy, provenance).

The shipped file is weights-only (format, config, model state, provenance; no optimiser state), so it is
about the size of the parameters (GCNN C4/4/16: about 420 KB).

    python examples/export_pretrained.py gcnn-c4-rotated docs/results/study-full/gcnn-c4-16-rotated-seed0/best.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gconv_ext.io import atomic_torch_save, write_json
from gconv_ext.models.weights import PRETRAINED_DIR, sha256_file
from gconv_ext.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint


def export(name: str, checkpoint: Path, out_dir: Path = PRETRAINED_DIR) -> dict:
    """Write ``out_dir/<name>.pt`` and update ``out_dir/manifest.json``; returns the manifest entry."""
    ckpt = load_checkpoint(checkpoint)
    result_path = checkpoint.parent / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    slim = {k: ckpt[k] for k in ("config", "model", "epoch", "val_acc", "num_params", "precision", "provenance")
            if k in ckpt}
    slim["format"] = CHECKPOINT_FORMAT
    target = out_dir / f"{name}.pt"
    atomic_torch_save(slim, target)
    entry = {
        "file": target.name,
        "sha256": sha256_file(target),
        "model": ckpt["config"]["model"],
        "preset": ckpt["config"].get("preset"),
        "train_rotation": ckpt["config"]["train_rotation"],
        "seed": ckpt["config"].get("seed"),
        "num_params": ckpt.get("num_params"),
        "rotated_test_acc": result.get("rotated_test_acc"),
        "upright_test_acc": result.get("upright_test_acc"),
        "n_rotated_test": result.get("n_rotated_test"),
        "provenance": ckpt.get("provenance"),
        "source": str(checkpoint),
    }
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[name] = entry
    write_json(manifest_path, dict(sorted(manifest.items())))
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the name users load it by, e.g. gcnn-c4-rotated")
    p.add_argument("checkpoint", type=Path, help="a best.pt written by training (its result.json beside it)")
    p.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR)
    args = p.parse_args(argv)
    entry = export(args.name, args.checkpoint, args.out_dir)
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
