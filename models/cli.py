"""``foreshock model``: build, quantize, export-tflite, evaluate, sign, verify, keygen.

Bad input gives one ConfigError / DataError / BundleError line (the root CLI prints it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from foreshock.errors import BundleError, ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Build, quantize, export, evaluate, sign and verify model bundles.")


@app.command()
def build(
    default: bool = typer.Option(False, "--default", help="Rebuild the shipped default bundle "
                                 "(models/bundles/foreshock-default/<version>)."),
    out: Path | None = typer.Option(None, help="Bundle directory to write."),
    key: Path | None = typer.Option(None, help="ed25519 signing key (PEM); default "
                                    "$FORESHOCK_MODEL_KEY or a dev key outside the repo."),
    data_dir: Path | None = typer.Option(None, help="Shared data directory (with cwru/)."),
    reduced: bool = typer.Option(False, help="Fewer simulated machines (fast, for tests)."),
    seed: int = typer.Option(7, help="Seed of the simulated fleet and the training."),
    from_gateway: str | None = typer.Option(None, "--from-gateway", help="Gateway store url: "
                                            "add the fleet's labelled feedback, and write "
                                            "--out only if it beats --current."),
    current: Path | None = typer.Option(None, "--current", help="Bundle to beat (default: "
                                        "the shipped default bundle)."),
) -> None:
    """Train the detector and write a signed bundle (fp32, int8 QDQ and TFLite files)."""
    from models.build_default import DefaultBuild, build_default

    if from_gateway is not None:
        _build_from_gateway(from_gateway, out, current, key, data_dir,
                            DefaultBuild(seed=seed, reduced=reduced))
        return
    if not default and out is None:
        raise ConfigError("give --default or --out DIR", hint="foreshock model build --default")
    if data_dir is not None and not (data_dir / "cwru").is_dir():
        raise ConfigError(f"--data-dir {data_dir} has no cwru/ folder")
    path, manifest = build_default(out, key, DefaultBuild(seed=seed, reduced=reduced), data_dir)
    typer.echo(f"built {path} (version {manifest['version']}, "
               f"spec {manifest['feature_spec_hash']})")


def _build_from_gateway(db_url: str, out: Path | None, current: Path | None,
                        key: Path | None, data_dir: Path | None, cfg: Any) -> None:
    from agent.features import DEFAULT_SPEC
    from models.build import ensure_key
    from models.build_default import (
        BUNDLES,
        DEFAULT_NAME,
        DEFAULT_VERSION,
        DefaultBuild,
        default_key,
        training_sets,
    )
    from models.retrain import retrain

    if out is None:
        raise ConfigError("--from-gateway needs --out DIR for the candidate bundle")
    assert isinstance(cfg, DefaultBuild)
    current = current or BUNDLES / DEFAULT_NAME / DEFAULT_VERSION
    if not (current / "manifest.json").is_file():
        raise ConfigError(f"--current {current} is not a bundle directory")
    sets, _ = training_sets(cfg, DEFAULT_SPEC, data_dir)
    r = retrain(db_url, current, out, ensure_key(key or default_key()), sets=sets,
                spec=DEFAULT_SPEC, seed=cfg.seed)
    typer.echo(f"feedback: {r.train_feedback} labelled alerts for training, "
               f"{r.held_feedback} held back")
    for name, m in (("current", r.current), ("candidate", r.candidate)):
        typer.echo(f"{name:<9} false alarms flagged {m['false_alarms_flagged']}/"
                   f"{m['false_alarms']}, confirmed flagged {m['confirmed_flagged']}/"
                   f"{m['confirmed']} (floor {m['floor']:.3g})")
    for name, e in r.evidence.items():
        typer.echo(f"{name:<9} known faults: machines detected {e['fault_machines_detected']}/"
                   f"{e['fault_machines']}, windows {e['fault_window_recall']:.1%}, confirmed "
                   f"labels {e['confirmed_labels_flagged']}/{e['confirmed_labels']}; normal "
                   f"windows flagged {e['normal_windows_flagged']:.1%}")
    if not r.accepted:
        typer.echo(f"candidate refused: {r.reason}; no bundle written")
        raise typer.Exit(1)
    typer.echo(f"built {out}: signed; roll it out with `foreshock gateway deploy {out}`")


@app.command()
def quantize(
    bundle: Path = typer.Argument(..., help="Bundle directory with detector.onnx."),
    key: Path = typer.Option(..., help="Signing key to re-sign the bundle with."),
    calibration: Path | None = typer.Option(None, help=".npy of z-vectors [n, k]; default: "
                                            "seeded z drawn from the manifest's statistics."),
) -> None:
    """Re-quantize the bundle's fp32 detector to int8 QDQ and re-sign."""
    from models.tools import requantize

    requantize(bundle, key, calibration)
    typer.echo(f"quantized {bundle}")


@app.command("export-tflite")
def export_tflite(
    bundle: Path = typer.Argument(..., help="Bundle directory with detector.onnx."),
    key: Path = typer.Option(..., help="Signing key to re-sign the bundle with."),
) -> None:
    """Write detector.tflite from the bundle's fp32 ONNX weights and re-sign."""
    from models.tools import reexport_tflite

    reexport_tflite(bundle, key)
    typer.echo(f"exported {bundle}/detector.tflite")


@app.command()
def evaluate(
    data_dir: Path | None = typer.Option(None, help="Shared data directory (cwru/, femto/)."),
    report: Path | None = typer.Option(None, help="Markdown report to write (default: the "
                                       "repository's docs/evaluation.md)."),
    quick: bool = typer.Option(False, help="Smaller simulated fleets (minutes -> seconds)."),
) -> None:
    """Run the whole evaluation (CWRU cross-load, transfer, FEMTO, simulated fleet)."""
    from models.evaluate import REPORT, run_all

    if data_dir is not None and not (data_dir / "cwru").is_dir():
        raise ConfigError(f"--data-dir {data_dir} has no cwru/ folder")
    summary = run_all(data_dir, report or REPORT, quick=quick)
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def sign(bundle: Path = typer.Argument(...), key: Path = typer.Option(...)) -> None:
    """Sign (or re-sign with a site's own key) the bundle's manifest."""
    from models.build import resign

    resign(bundle, key)
    typer.echo(f"signed {bundle}")


@app.command()
def verify(
    bundle: Path = typer.Argument(...),
    trusted: list[Path] = typer.Option(None, "--trusted", help="Trusted public key(s) (PEM); "
                                       "default: models/bundles/foreshock-dev.pub."),
) -> None:
    """Check the signature and every file hash; print the manifest summary."""
    from foreshock import bundle as fb
    from models.build_default import DEV_PUBLIC_KEY

    keys = [fb.load_public_key(p) for p in (trusted or [DEV_PUBLIC_KEY])]
    m = fb.verify(bundle, keys)
    det = m.data["models"].get("detector", {})
    typer.echo(f"ok {m.name} {m.version} spec {m.feature_spec_hash} detector "
               f"{det.get('file')} ({len(det.get('input_features', []))} inputs)")


@app.command()
def keygen(out: Path = typer.Argument(..., help="Private key path (PEM, mode 0600); the "
                                       "public key goes next to it as .pub")) -> None:
    """Create an ed25519 model-signing key pair."""
    from models.build import ensure_key

    if out.exists():
        raise BundleError(f"{out} exists; refusing to overwrite a signing key")
    ensure_key(out)
    typer.echo(f"wrote {out} and {out.with_suffix('.pub')}")
