"""Score a finished run's saved images again with another scorer or ensemble, rendering nothing.

    python -m bayes_merger.rescore runs/<run> scorer=pickscore
    bayes-merger-rescore runs/<run> scorer=ensemble 'scorer.ensemble={pickscore: 1, hpsv2: 1}' top_k=10

Each trial's images (``images/`` of the run folder) are scored with their prompt (the PNG's ``prompt``
text, as rendered) and combined as the run combined its own scores (its payloads' ``score_weight`` and
``scorer.combine``), into ``rescore-<scorer>.jsonl`` beside ``trials.jsonl`` (which is never touched)
and a column of the report. The scorer's settings start from the run's own ``scorer`` section
(device, cache, CLIP …); ``scorer=NAME`` picks another scorer and ``scorer.KEY=VALUE`` sets any
option. ``top_k=N`` re-scores only the N best trials by the run's score — the *finalists*, which a
run can also re-rank by itself at its end (``scorer.finalists``).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from bayes_merger.config import ScorerConfig
from bayes_merger.errors import BayesMergerError, ConfigError, ScorerError
from bayes_merger.run_folder import (
    CONFIG_FILE,
    MANUAL_RATINGS_RESCORE,
    PAYLOAD_WEIGHTS,
    TRIALS_FILE,
    check_same_settings,
    check_trial_folder,
    load_run_info,
    now,
    ranked,
    read_trial_records,
    record_score,
    write_rescores,
)
from bayes_merger.scoring import ImageContext, Scorer, build_scorer, score_trial
from bayes_merger.scoring.registry import named_scorer, renamed_scorer, scorer_identity, scorer_name

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Rescored:
    path: Path  # the rescore-<name>.jsonl written
    scorer: str
    scores: dict[int, float]  # trial → new objective, for the trials that could be scored


def rescore_run(
    run_dir: Path, config: ScorerConfig, *, top_k: int | None = None, scorer: Scorer | None = None
) -> Rescored:
    """Score the saved images of ``run_dir``'s successful trials (the ``top_k`` best, if given) with
    the scorer ``config`` describes; write rescore-<name>.jsonl and return the new scores."""
    run_dir = Path(run_dir)
    records = read_trial_records(run_dir / TRIALS_FILE)
    chosen = ranked(records, record_score, lambda r: int(r.get("trial", 0)))
    if top_k is not None:
        if top_k < 1:
            raise ConfigError(f"top_k is {top_k}; it must be at least 1.")
        chosen = chosen[:top_k]
    if not chosen:
        raise ConfigError(f"{run_dir} has no successful trial to re-score.")
    label, settings = scorer.name if scorer else scorer_name(config), scorer_identity(config)
    check_same_settings(run_dir, label, settings)  # before the scorer loads (or downloads)
    scorer = scorer or build_scorer(config)
    weights = _score_weights(run_dir)
    lines: list[dict[str, Any]] = []
    scores: dict[int, float] = {}
    try:
        for record in sorted(chosen, key=lambda r: int(r.get("trial", 0))):
            number = int(record.get("trial", 0))
            line: dict[str, Any] = {"trial": number, "scorer": label, "settings": settings,
                                    "original_score": record_score(record)}
            try:
                images, contexts = _saved_images(run_dir, record)
                values = scorer.score(images, contexts)
                names = [c.payload for c in contexts]
                per_payload, objective = score_trial(
                    values, names, {p: weights.get(p, 1.0) for p in names}, config.combine
                )
            except ScorerError as error:
                log.error("trial %d not re-scored: %s", number, error)
                lines.append({**line, "score": None, "error": str(error), "scored_at": now()})
                continue
            scores[number] = objective
            lines.append({
                **line, "score": objective, "payload_scores": per_payload,
                "images": [{"payload": c.payload, "index": c.index, "seed": c.seed,
                            "path": c.path.relative_to(run_dir).as_posix() if c.path else None, "score": v}
                           for c, v in zip(contexts, values)],
                "scored_at": now(),
            })
            log.info("trial %d: %s %.4f (run's score %.4f)", number, label, objective, line["original_score"])
    finally:  # out of memory or Ctrl-C at a trial keeps those scored before it
        if lines:
            path = write_rescores(run_dir, label, lines)
    log.info("Re-scored %d of %d trials with %s into %s", len(scores), len(lines), label, path)
    return Rescored(path, label, scores)


def _saved_images(run_dir: Path, record: Mapping[str, Any]) -> tuple[list[Image.Image], list[ImageContext]]:
    images: list[Image.Image] = []
    contexts: list[ImageContext] = []
    for entry in record.get("images") or ():
        relative = entry.get("path")
        if not relative:
            raise ScorerError("its images were not saved (save_images: false), so there is nothing to re-score.")
        path = run_dir / relative
        try:
            with Image.open(path) as image:
                image.load()
        except OSError as error:
            raise ScorerError(f"its image {path} cannot be read ({error}).") from error
        prompt = str(image.info.get("prompt", "")) if hasattr(image, "info") else ""
        images.append(image)
        contexts.append(ImageContext(payload=str(entry.get("payload", "")), index=int(entry.get("index", 0)),
                                     seed=int(entry.get("seed", -1)), path=path, prompt=prompt))
    if not images:
        raise ScorerError("it has no images recorded.")
    return images, contexts


def _score_weights(run_dir: Path) -> dict[str, float]:
    """Each payload's score_weight, as run.json recorded it (older runs: from the run's own config and
    payload files); 1 for all when it cannot be read."""
    recorded = (load_run_info(run_dir) or {}).get(PAYLOAD_WEIGHTS)
    if isinstance(recorded, Mapping):
        return {str(name): float(weight) for name, weight in recorded.items()}
    try:
        from omegaconf import OmegaConf

        from bayes_merger.config import PayloadsConfig
        from bayes_merger.webui.payloads import load_payloads

        saved = OmegaConf.load(run_dir / CONFIG_FILE)
        payloads_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PayloadsConfig), saved.payloads))
        return {p.name: p.score_weight for p in load_payloads(payloads_cfg, int(saved.run.seed))}
    except Exception as error:  # noqa: BLE001 - a moved payload folder only loses the weights
        log.warning("The run's payload weights could not be read (%s); every payload counts the same.", error)
        return {}


def scorer_config(run_dir: Path, overrides: Sequence[str]) -> tuple[ScorerConfig, int | None]:
    """The run's scorer section with ``scorer=NAME`` / ``scorer.KEY=VALUE`` overrides; and ``top_k``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    run_scorer = OmegaConf.structured(ScorerConfig)
    saved_path = Path(run_dir) / CONFIG_FILE
    if saved_path.is_file():
        saved = OmegaConf.load(saved_path)
        if "scorer" in saved:
            run_scorer = OmegaConf.merge(run_scorer, saved.scorer)
    base: ScorerConfig = OmegaConf.to_object(run_scorer)  # type: ignore[assignment]
    top_k: int | None = None
    dotlist: list[str] = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"{override!r} is not key=value (e.g. scorer=pickscore, scorer.batch_size=4, top_k=5).")
        if key == "scorer":  # as a run's finalists name it; checked once all is merged (build_scorer)
            base = renamed_scorer(base, value)
        elif key == "top_k":
            try:
                top_k = int(value)
            except ValueError:
                raise ConfigError(f"top_k is {value!r}; it must be a whole number, at least 1.") from None
        elif key.startswith("scorer."):
            if key == "scorer.ensemble":  # the members given, not added to the run's (as a run's override does)
                base = dataclasses.replace(base, ensemble={})
            dotlist.append(f"{key.removeprefix('scorer.')}={value}")
        else:
            raise ConfigError(f"{key!r} is not an option here: use scorer=NAME, scorer.KEY=VALUE or top_k=N.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), OmegaConf.from_dotlist(dotlist))
        config: ScorerConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        raise ConfigError(f"Bad scorer option: {error}") from error
    # manual ratings of a re-score are kept apart from the run's own
    if config.manual_ratings is None:
        config = dataclasses.replace(config, manual_ratings=str(Path(run_dir) / MANUAL_RATINGS_RESCORE))
    return config, top_k


def finalists(run_dir: Path, config: ScorerConfig) -> Rescored | None:
    """The end-of-run re-ranking (``scorer.finalists``): the top trials again with a stronger scorer.

    Never fails the run: a finalists scorer that cannot load or score is logged, and the run's own
    results stand. That includes torch's errors (RuntimeError): out of memory is likely where the
    finalists' large models meet the WebUI's on one GPU.
    """
    if not config.finalists:
        return None
    try:
        finalist_config = named_scorer(config, config.finalists)
        result = rescore_run(run_dir, finalist_config, top_k=config.finalists_top_k)
    except (BayesMergerError, RuntimeError) as error:
        log.error("The finalists were not re-scored with %s: %s", config.finalists, error)
        return None
    order = sorted(result.scores.items(), key=lambda item: (-item[1], item[0]))
    log.info("Finalists by %s: %s", result.scorer,
             ", ".join(f"trial {trial} {score:.4f}" for trial, score in order) or "none scored")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    run_dir = Path(args[0])
    try:
        check_trial_folder(run_dir)
        config, top_k = scorer_config(run_dir, args[1:])
        result = rescore_run(run_dir, config, top_k=top_k)
        try:
            from bayes_merger.report import write_report

            write_report(run_dir)
        except Exception:  # noqa: BLE001 - the scores are written; a broken plot must not hide that
            log.exception("Could not rebuild the report of %s.", run_dir)
    except BayesMergerError as error:
        print(f"bayes-merger-rescore: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    print(f"{len(result.scores)} trials re-scored with {result.scorer}: {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
