"""The ``liaids`` command line: a thin layer over the Python API, one verb per job.

Every :class:`liaids.errors.LiaidsError` ends the command with one line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from liaids.errors import LiaidsError

app = typer.Typer(
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
    help="LiAIDS: liver lesion AI on triple-phase CT. Not for clinical use.",
)
dataset_app = typer.Typer(no_args_is_help=True, help="Work with datasets in the LiAIDS format.")
app.add_typer(dataset_app, name="dataset")
train_app = typer.Typer(no_args_is_help=True, help="Train the networks on a dataset in the LiAIDS format.")
app.add_typer(train_app, name="train")
console = Console(stderr=True)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to create.")],
    cases: Annotated[int, typer.Option(min=1, help="Number of patients.")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="Cohort seed (>= 0).")] = 0,
    profile: Annotated[
        str, typer.Option(help="Built-in profile (internal, zzh, qzh, nbh) or a JSON/YAML file.")
    ] = "internal",
    fmt: Annotated[str, typer.Option("--format", help="Image format: nifti or dicom.")] = "nifti",
    preview: Annotated[bool, typer.Option("--preview", help="Write preview.png per case.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Parallel processes.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing non-empty output folder.")] = False,
    first_case: Annotated[
        int,
        typer.Option(
            min=0, help="Index of the first case: cases FIRST..FIRST+CASES-1 of the cohort (to extend one)."
        ),
    ] = 0,
) -> None:
    """Generate a synthetic triple-phase liver CT cohort (phantom) in the dataset format."""
    from rich.progress import Progress

    from liaids.phantom.cohort import synthesize_dataset
    from liaids.phantom.profiles import load_profile

    if fmt not in ("nifti", "dicom"):
        raise LiaidsError(f"--format must be nifti or dicom, got {fmt!r}")
    prof = load_profile(profile)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"synthesising {cases} case(s), profile {prof.name}", total=cases)
        synthesize_dataset(
            out,
            cases,
            seed,
            prof,
            fmt,
            preview,
            workers,
            overwrite,  # type: ignore[arg-type]
            progress=lambda _cid: bar.advance(task),
            first_case=first_case,
        )
    print(out)


@app.command()
def inspect(
    path: Annotated[Path, typer.Argument(help="NIfTI file, DICOM series folder, or a study folder.")],
) -> None:
    """Print what LiAIDS reads from a volume or study: series, phases, geometry (JSON)."""
    from liaids.io import list_series, read_study, read_volume

    if path.is_dir() and len({s.series_uid for s in list_series(path) if s.modality == "CT"}) > 1:
        study = read_study(path)
        out = {p: _describe(v) for p, v in study.phases.items()}
        out["phase_assignment"] = study.meta.get("phase_assignment", {})
    else:
        out = _describe(read_volume(path))
    print(json.dumps(out, indent=1, default=str))


def _describe(vol: object) -> dict:
    from liaids.types import Volume

    assert isinstance(vol, Volume)
    return {
        "shape_kji": list(vol.shape),
        "spacing_ijk": [round(s, 4) for s in vol.spacing],
        "origin": [round(o, 3) for o in vol.origin],
        "direction": [round(d, 4) for d in vol.direction],
        "hu_min": float(vol.array.min()),
        "hu_max": float(vol.array.max()),
        "meta": {k: v for k, v in vol.meta.items() if isinstance(v, str | int | float | type(None))},
    }


@app.command()
def segment(
    input_path: Annotated[
        Path, typer.Argument(metavar="INPUT", help="CT volume: NIfTI file or DICOM series folder.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output NIfTI label map (1 liver, 2 lesion).")],
    weights: Annotated[
        Path | None, typer.Option(help="Model folder (default: the shipped small model).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Segment the liver and its lesions in one CT volume; the label map keeps the input's geometry."""
    from liaids.segmentation.predictor import segment as segment_api

    print(segment_api(input_path, out, weights, device))


@app.command()
def detect(
    input_path: Annotated[
        Path, typer.Argument(metavar="INPUT", help="CT volume: NIfTI file or DICOM series folder.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output JSON file (liaids.detections).")],
    liver: Annotated[
        Path | None, typer.Option(help="Liver mask in the CT's geometry (default: segment it).")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="Detector model folder (default: the shipped small 3D CSWin).")
    ] = None,
    liver_weights: Annotated[
        Path | None, typer.Option(help="Segmentation model folder used without --liver.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Detect focal liver lesions in one CT volume: 3D boxes (bbox_ijk, half-open voxel indices), scores."""
    from liaids.detection.predictor import detect as detect_api

    print(detect_api(input_path, out, liver, weights, liver_weights, device))


@app.command()
def diagnose(
    inputs: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="INPUT...",
            help="A dataset case folder, a folder with the study's DICOM series, or three NIfTI files.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (absent or empty).")] = Path("."),
    clinical: Annotated[
        Path | None, typer.Option(help="JSON file with the clinical fields (or a case.json).")
    ] = None,
    age: Annotated[float | None, typer.Option(help="Age in years.")] = None,
    sex: Annotated[str | None, typer.Option(help="M or F.")] = None,
    hepatitis_b: Annotated[bool | None, typer.Option("--hepatitis-b/--no-hepatitis-b")] = None,
    hepatitis_c: Annotated[bool | None, typer.Option("--hepatitis-c/--no-hepatitis-c")] = None,
    cirrhosis: Annotated[bool | None, typer.Option("--cirrhosis/--no-cirrhosis")] = None,
    cholangiolithiasis: Annotated[
        bool | None, typer.Option("--cholangiolithiasis/--no-cholangiolithiasis")
    ] = None,
    extrahepatic_tumour: Annotated[
        bool | None, typer.Option("--extrahepatic-tumour/--no-extrahepatic-tumour")
    ] = None,
    missing_history: Annotated[
        str,
        typer.Option(help="History fields nobody gave: 'error' (default) or 'absent' (taken as no)."),
    ] = "error",
    nc: Annotated[
        str | None, typer.Option("--nc", help="NC series: folder, SeriesInstanceUID or number.")
    ] = None,
    art: Annotated[
        str | None, typer.Option("--art", help="ART series (overrides the automatic choice).")
    ] = None,
    pv: Annotated[
        str | None, typer.Option("--pv", help="PV series (overrides the automatic choice).")
    ] = None,
    weights: Annotated[
        list[Path] | None, typer.Option(help="Model folder(s) or a bundle folder (default: shipped models).")
    ] = None,
    triage_threshold: Annotated[
        float | None, typer.Option(help="Malignant-probability threshold of the triage (default: stored).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Diagnose one triple-phase CT study: lesions, types, patient decision, triage, report.json/.html."""
    from liaids.pipeline import diagnose as diagnose_api
    from liaids.pipeline import parse_clinical_options

    given = parse_clinical_options(
        clinical,
        age=age,
        sex=sex,
        hepatitis_b=hepatitis_b,
        hepatitis_c=hepatitis_c,
        cirrhosis=cirrhosis,
        cholangiolithiasis=cholangiolithiasis,
        extrahepatic_tumour=extrahepatic_tumour,
        missing_history=missing_history,
    )
    overrides = {p: v for p, v in (("NC", nc), ("ART", art), ("PV", pv)) if v is not None}
    source: Path | list[Path] | None = None
    if inputs:
        source = inputs[0] if len(inputs) == 1 else list(inputs)
    _run_with_progress(
        lambda progress: diagnose_api(
            source,
            out,
            clinical=given,
            phases_override=overrides or None,
            weights=list(weights) if weights else None,
            device=device,
            triage_threshold=triage_threshold,
            overwrite=overwrite,
            progress=progress,
        ),
        "diagnosing",
    )
    _print_lesion_table(out / "report.json")
    print(out / "report.html")


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder with lesion masks.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (absent or empty).")],
    weights: Annotated[
        list[Path] | None, typer.Option(help="Model folder(s) or a bundle folder (default: shipped models).")
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Earlier diagnose runs as PRED/CASE_ID/report.json (skips inference).")
    ] = None,
    reader_calls: Annotated[Path | None, typer.Option(help="Reader-study calls CSV (see docs).")] = None,
    reader_truth: Annotated[Path | None, typer.Option(help="Reader-study truth CSV.")] = None,
    ai_calls: Annotated[Path | None, typer.Option(help="LiAIDS's own patient calls CSV.")] = None,
    ablation: Annotated[
        list[str] | None, typer.Option(help="NAME=DIR: a classifier variant or detector to compare (repeat).")
    ] = None,
    match_phase: Annotated[
        str, typer.Option(help="any, NC, ART or PV: where detection hits are judged.")
    ] = "any",
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the CIs.")] = 1000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    tsne: Annotated[bool, typer.Option(help="t-SNE of the classifier's image features.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    skip_failed: Annotated[
        bool,
        typer.Option(
            help="Leave out (and list in metrics.json) cases the pipeline refuses or whose report is "
            "missing, instead of stopping."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Evaluate on a dataset with the paper's statistics: metrics.json, CSVs, plots, report.html."""
    from liaids.evaluate.suite import EvaluationSettings
    from liaids.evaluate.suite import evaluate as evaluate_api

    ablations: dict[str, Path] = {}
    for item in ablation or []:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise typer.BadParameter(f"expected NAME=DIR, got {item!r}", param_hint="--ablation")
        ablations[name] = Path(folder)
    settings = EvaluationSettings(match_phase=match_phase, n_resamples=bootstrap, seed=seed, tsne=tsne)
    _run_with_progress(
        lambda progress: evaluate_api(
            dataset,
            out,
            weights=list(weights) if weights else None,
            predictions=predictions,
            reader_csv=reader_calls,
            reader_truth=reader_truth,
            ai_calls=ai_calls,
            ablations=ablations or None,
            device=device,
            settings=settings,
            overwrite=overwrite,
            skip_failed=skip_failed,
            progress=progress,
        ),
        "evaluating",
    )
    failed = json.loads((out / "metrics.json").read_text())["dataset"]["failed_cases"]
    for case in failed:
        typer.echo(f"left out {case['case_id']}: {case['error']}", err=True)
    if failed:
        typer.echo(f"{len(failed)} case(s) left out of every statistic (metrics.json failed_cases)", err=True)
    print(out / "report.html")


def _print_lesion_table(report_path: Path) -> None:
    """The lesions and the patient decision of a report.json, as a table on the terminal."""
    from rich.table import Table

    report = json.loads(report_path.read_text())
    table = Table(title=f"Lesions ({report_path.parent})")
    for column in ("id", "type", "P(type)", "malignant", "diameter mm", "volume ml", "score"):
        table.add_column(column)
    for lesion in report.get("lesions", []):
        probs = lesion.get("probabilities", {})
        table.add_row(
            str(lesion.get("id")),
            str(lesion.get("type")),
            f"{probs.get(lesion.get('type'), float('nan')):.2f}",
            f"{lesion.get('malignant_probability', float('nan')):.2f}",
            f"{lesion.get('diameter_mm', float('nan')):.1f}",
            f"{lesion.get('volume_ml', float('nan')):.2f}",
            f"{lesion.get('detection_score', float('nan')):.2f}",
        )
    Console().print(table)
    diagnosis, triage = report.get("diagnosis", {}), report.get("triage", {})
    decided = f"{diagnosis.get('diagnosis')} ({diagnosis.get('malignancy')})"
    print(f"diagnosis: {decided}; triage: {triage.get('risk')}")
    print(report.get("notice", ""))


def _number_list(text: str | None, option: str) -> list[float] | None:
    """A comma-separated list of numbers from the command line (None stays None)."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(
            f"expected numbers separated by commas, got {text!r}", param_hint=option
        ) from exc


def _run_with_progress(
    job: Callable[[Callable[[str, float], None]], object], label: str = "training"
) -> None:
    """Run a training job under a rich progress bar fed by its ``progress(message, fraction)`` callback."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(label, total=1.0)
        job(lambda msg, frac: bar.update(task, description=msg, completed=frac))


@train_app.command("detect")
def train_detect(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    backbone: Annotated[str, typer.Option(help="cswin3d (the paper's) or cnn2d (the ablation).")] = "cswin3d",
    profile: Annotated[str, typer.Option(help="small (CPU) or paper (GPU).")] = "small",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the profile's epochs.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Override the profile's steps per epoch.")] = None,
    val_every: Annotated[
        int | None, typer.Option(min=0, help="Validate every N epochs (0: only at the end).")
    ] = None,
    lesion_sampling: Annotated[
        str | None,
        typer.Option(
            help="Lesion-centred slabs: slice (uniform over lesion slices), lesion (uniform over lesions) "
            "or small (lesions weighted by 1 / in-plane size)."
        ),
    ] = None,
    anchor_scales: Annotated[
        str | None,
        typer.Option(
            help="Anchor sizes as multiples of each level's stride, comma-separated (paper: 1,3); "
            "the same again with --resume."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    splits_file: Annotated[
        Path | None,
        typer.Option(help='JSON {"train": [...], "val": [...]} of case ids (default: seeded split).'),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Grid cache folder to share between runs (default OUT/cache).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes that build the cache.")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train the lesion detector (Faster R-CNN with a 3D CSWin or 2D CNN backbone)."""
    from liaids.train.detection import train_detection

    _run_with_progress(
        lambda progress: train_detection(
            data,
            out,
            backbone,
            profile,
            epochs=epochs,
            steps_per_epoch=steps,
            val_every=val_every,
            lesion_sampling=lesion_sampling,
            anchor_scales=_number_list(anchor_scales, "--anchor-scales"),
            seed=seed,
            resume=resume,
            splits_file=splits_file,
            cache=cache,
            workers=workers,
            device=device,
            progress=progress,
        )
    )
    print(out)


@train_app.command("filter")
def train_filter(
    data: Annotated[Path, typer.Option(help="Dataset folder (the detector's training cases are left out).")],
    detector: Annotated[Path, typer.Option(help="The trained detector's model folder.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder; copy it into DETECTOR as candidate_filter/.")
    ],
    profile: Annotated[str, typer.Option(help="small (CPU) or paper (GPU).")] = "small",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the profile's epochs.")] = None,
    max_cases: Annotated[int | None, typer.Option(min=2, help="Use only the first N usable cases.")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    splits_file: Annotated[
        Path | None,
        typer.Option(help='JSON {"train": [...], "val": [...]} of case ids (default: seeded split).'),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Candidate cache folder to share between runs (default OUT/cache).")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train the candidate filter that re-scores a detector's candidates (false-positive reduction)."""
    from liaids.train.candidate_filter import train_candidate_filter

    _run_with_progress(
        lambda progress: train_candidate_filter(
            data,
            detector,
            out,
            profile,
            epochs=epochs,
            seed=seed,
            resume=resume,
            max_cases=max_cases,
            splits_file=splits_file,
            cache=cache,
            device=device,
            progress=progress,
        )
    )
    print(out)


@train_app.command("verifier")
def train_verifier_command(
    data: Annotated[
        list[Path], typer.Option(help="Validation cases the detector never trained on (repeatable).")
    ],
    predictions: Annotated[
        list[Path],
        typer.Option(help="Their diagnose runs with every candidate kept, one per --data (repeatable)."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder; copy verifier.json into the detector folder.")
    ],
    min_score: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Detector score from which lesions are verified.")
    ] = 0.8,
    l2: Annotated[float, typer.Option(min=0.0, help="L2 penalty of the logistic model.")] = 1.0,
    cases: Annotated[
        Path | None, typer.Option(help="JSON list of case ids to fit on (one --data only; default: all).")
    ] = None,
) -> None:
    """Fit the lesion verifier that re-scores matched lesions from the three phases (vessels out)."""
    from liaids.train.verifier import train_verifier

    case_ids = None
    if cases is not None:
        try:
            case_ids = [str(c) for c in json.loads(cases.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            raise LiaidsError(f"cannot read a JSON list of case ids ({exc})", cases) from exc
    _run_with_progress(
        lambda progress: train_verifier(
            data, predictions, out, min_score=min_score, l2=l2, case_ids=case_ids, progress=progress
        )
    )
    print(out / "verifier.json")


@train_app.command("classify")
def train_classify(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    variant: Annotated[
        str, typer.Option(help="full, image (no clinical), clinical (no image) or concat (no interaction).")
    ] = "full",
    profile: Annotated[str, typer.Option(help="small (CPU) or paper (GPU).")] = "small",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the profile's epochs.")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    splits_file: Annotated[
        Path | None,
        typer.Option(help='JSON {"train": [...], "val": [...]} of case ids (default: seeded split).'),
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="Patch cache folder to share between runs (default OUT).")
    ] = None,
    box_errors: Annotated[
        Path | None,
        typer.Option(
            help="Detection benchmark result (benchmarks/detection.py accuracy --out) whose measured box "
            "errors the training jitter is drawn from (default: Gaussian jitter)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Train the lesion classifier (three-phase DenseNet with phase interaction and clinical fusion)."""
    from liaids.train.classification import train_classification

    _run_with_progress(
        lambda progress: train_classification(
            data,
            out,
            variant,
            profile,
            epochs=epochs,
            seed=seed,
            resume=resume,
            splits_file=splits_file,
            cache=cache,
            box_errors=box_errors,
            device=device,
            progress=progress,
        )
    )
    print(out)


@train_app.command("segment")
def train_segment(
    data: Annotated[Path, typer.Option(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output model folder.")],
    profile: Annotated[str, typer.Option(help="small (CPU) or paper (GPU).")] = "small",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the profile's epochs.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Override the profile's steps per epoch.")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    splits_file: Annotated[
        Path | None,
        typer.Option(help='JSON {"train": [...], "val": [...]} of case ids (default: seeded split).'),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    workers: Annotated[int, typer.Option(min=1, help="Threads that read and resample the cases.")] = 1,
) -> None:
    """Train the liver segmentation network (hybrid 2D/3D U-Net)."""
    from liaids.train.segmentation import train_segmentation

    _run_with_progress(
        lambda progress: train_segmentation(
            data,
            out,
            profile,
            epochs=epochs,
            steps_per_epoch=steps,
            seed=seed,
            resume=resume,
            splits_file=splits_file,
            device=device,
            workers=workers,
            progress=progress,
        )
    )
    print(out)


@train_app.command("refine-liver")
def train_refine_liver(
    data: Annotated[Path, typer.Option(help="Dataset folder (the segmentation model's training data).")],
    segmenter: Annotated[Path, typer.Option(help="The trained liver segmentation model folder.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder; copy it into SEGMENTER as refinement/.")
    ],
    profile: Annotated[str, typer.Option(help="small (CPU) or paper (GPU).")] = "small",
    epochs: Annotated[int | None, typer.Option(min=1, help="Override the profile's epochs.")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="Override the profile's steps per epoch.")] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/last.pt.")] = False,
    splits_file: Annotated[
        Path | None,
        typer.Option(
            help="JSON of train and val case ids; pass SEGMENTER/splits.json (default: seeded split)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    workers: Annotated[int, typer.Option(min=1, help="Threads that read the cases.")] = 1,
) -> None:
    """Train the liver boundary refinement stage (a finer grid, cascaded after the segmentation network)."""
    from liaids.train.liver_refinement import train_liver_refinement

    _run_with_progress(
        lambda progress: train_liver_refinement(
            data,
            segmenter,
            out,
            profile,
            epochs=epochs,
            steps_per_epoch=steps,
            seed=seed,
            resume=resume,
            splits_file=splits_file,
            device=device,
            workers=workers,
            progress=progress,
        )
    )
    print(out)


@dataset_app.command("validate")
def dataset_validate(root: Annotated[Path, typer.Argument(help="Dataset folder.")]) -> None:
    """Load every case of a dataset and report problems (exit 1 if any)."""
    from liaids.dataset import Dataset

    ds = Dataset(root)
    problems = ds.validate()
    for line in problems:
        print(f"liaids: error: {line}", file=sys.stderr)
    if problems:
        raise typer.Exit(1)
    print(f"{root}: {len(ds)} case(s) valid")


def main() -> None:
    """Entry point: usage errors as click prints them (exit 2), LiAIDS errors as one line (exit 1)."""
    try:
        app()
    except LiaidsError as exc:
        print(f"liaids: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
