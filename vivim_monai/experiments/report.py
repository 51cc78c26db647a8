"""The comparison report of models cross-validated on one dataset (``scripts/compare_models.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from vivim_monai.experiments.cases import paired_cases_markdown
from vivim_monai.experiments.curves import fold_curves, write_training_curves
from vivim_monai.experiments.examples import write_examples
from vivim_monai.experiments.runs import ModelRun, count_parameters, load_run, model_parser
from vivim_monai.experiments.tables import comparison_csv, comparison_markdown, model_stats
from vivim_monai.utils import atomic_write

__all__ = ["write_comparison"]


def _network_facts(run: ModelRun) -> tuple[int | None, int | None, str]:
    """Parameter count of the run's network, its configured epochs, and a note when the network cannot be built."""
    if not run.configs:
        return None, None, f"{run.name}: parameters not counted (no cv_timing.json and no configs/{run.name}.json)"
    try:
        parser = model_parser(run)
        epochs = parser["epochs"]
        parameters = count_parameters(parser.get_parsed_content("network_def"))
    except Exception as error:  # a moved or broken run still gets its metric rows
        return None, None, f"{run.name}: parameters not counted ({type(error).__name__}: {error})"
    return parameters, epochs if isinstance(epochs, int) else None, ""


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when inside it (the report names no machine's folders), else as is."""
    resolved = Path(path).resolve()
    return resolved.relative_to(Path.cwd()).as_posix() if resolved.is_relative_to(Path.cwd()) else str(path)


def _dataset_line(output: Path, dataset_config: Path | None) -> tuple[str, str]:
    datalist = output / "datalist_folds.json"
    name, folds = output.name, ""
    if datalist.is_file():
        document = json.loads(datalist.read_text())
        name = document.get("name", name)
        folds = f", {document.get('folds', {}).get('n_folds', '?')} folds" if "folds" in document else ""
        folds = f"{document.get('numTraining', '?')} cases{folds}"
    config = f"dataset overlay `{_shown(dataset_config)}`" if dataset_config is not None else ""
    return name, ", ".join(part for part in (folds, config, f"runs in `{_shown(output)}`") if part)


def write_comparison(
    output: str | Path,
    models: Sequence[str],
    dataset_config: str | Path | None = None,
    reference: str | None = None,
    examples: bool = True,
    example_fold: int = 0,
    case_pairs: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``<output>/report/``: ``comparison.md`` / ``comparison.csv`` (mean ± sd over folds, per-fold table,
    winner on foreground Dice, paired differences of ``reference`` (default: the first model) to every other
    model), ``training_curves.png`` and, with ``examples``, ``examples.png`` (fold ``example_fold``'s first
    validation case through each model's checkpoint). ``output`` holds ``<model>/`` folders from
    ``scripts/cross_validate.py`` and ``datalist_folds.json``. ``case_pairs`` adds, per ``(first, second)`` pair of
    model names (e.g. with time, without time), the per-case and per-frame paired Dice table. Returns the path of
    ``comparison.md``."""
    output = Path(output)
    report = output / "report"
    dataset_config = Path(dataset_config) if dataset_config is not None else None
    models = list(models)
    reference = reference or models[0]
    runs = [load_run(output / name, name, dataset_config) for name in models]
    stats, curves, notes = [], {}, []
    for run in runs:
        parameters, epochs, note = _network_facts(run)
        notes += [note] if note else []
        notes += [] if run.summaries else [f"{run.name}: no evaluated fold in {run.path}"]
        stats.append(model_stats(run, parameters))
        curves[run.name] = {fold: fold_curves(folder, epochs) for fold, folder in run.fold_dirs.items()}
    write_training_curves(report / "training_curves.png", curves)
    name, description = _dataset_line(output, dataset_config)
    lines = [f"# Model comparison: {name}", "", description, "", f"## {name}", ""]
    lines += [comparison_markdown(stats, reference)]
    by_name = {run.name: run for run in runs}
    for first, second in case_pairs:
        if first in by_name and second in by_name:
            lines += [paired_cases_markdown(by_name[first], by_name[second])]
    lines += [
        "## Training curves",
        "",
        "![training curves](training_curves.png)",
    ]
    if examples:
        example_notes = write_examples(report / "examples.png", runs, output / "datalist_folds.json", example_fold)
        lines += ["", "## Example predictions", ""]
        lines += ["![examples](examples.png)"] if (report / "examples.png").is_file() else []
        lines += [""] + [f"- {note}" for note in example_notes] if example_notes else []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    markdown = "\n".join(lines).rstrip("\n") + "\n"
    table = comparison_csv(stats, reference)
    atomic_write(report / "comparison.csv", lambda tmp_name: Path(tmp_name).write_text(table))
    return atomic_write(report / "comparison.md", lambda tmp_name: Path(tmp_name).write_text(markdown))
