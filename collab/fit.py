"""`python -m collab.fit`: collaborative LoRA fine-tuning of N simulated clients.

Every client fine-tunes its own adapter on its own data over one shared frozen base, and every
--trust_freq steps (after --pretraining_rounds local steps) each client's adapter becomes a
trust-weighted average of all adapters.

Every option is named as a config file names it (--lora.rank is lora: {rank: ...}); the names of
the paper's code (--lora_rank, --trust, --thresh, ...) work too. The defaults suit the embedded
offline data on a CPU; --profile paper gives the paper's run settings (each profile's are listed
under --profile). Any option can also come from a --config file (a run folder's config.yaml is
one, and --print_config writes one); options on the command line win.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from data.manifest import data_digest
from lora_gpt import GPT, save_adapters
from lora_gpt.cli import fail
from lora_gpt.console import StepProgressBar, plain_warnings, quiet_third_party
from lora_gpt.errors import ConfigError, FixableError
from lora_gpt.options import flag_name
from lora_gpt.precision import resolve_precision

from .aggregation import TrustAggregation
from .attacks import AttackedDataModule, BatchedAttack, attack_summary
from .checkpoint import CONFIG_KEY, DATA_KEY, RunCheckpoint, read_checkpoint
from .cli import dump_config, fit_command
from .config import FitConfig, RunConfig
from .loggers import check_logger, make_logger
from .module import CollabLoRAModule
from .run_folder import RunFolder, RunFolderError, run_dir
from .summary import dataset_summary, format_outcome, run_summary

RUNS_ROOT = Path("runs")


def device_type(accelerator: str) -> str:
    """The torch device type an `--accelerator` choice runs on; a GPU that is not there is refused."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--accelerator {accelerator}: no CUDA device is visible here. Fix: --accelerator cpu, "
            "or auto (a GPU where there is one)."
        )
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "cuda" if on_gpu else "cpu"


def base_source(init: str) -> str | Path:
    """What `--init` names, as `GPT.from_pretrained` takes it: 'offline' is the cached offline base."""
    if init == "offline":
        from data.offline_base import offline_base

        return offline_base()
    return init


def load_base(run: RunConfig, sequence_length: int) -> GPT:
    """The frozen base every client shares."""
    base = GPT.from_pretrained(base_source(run.init), dropout=run.dropout, gelu=run.gelu)
    if sequence_length > base.config.block_size:
        raise ConfigError(
            f"--sequence_length {sequence_length} exceeds the base model's block_size "
            f"{base.config.block_size}; use --sequence_length {base.config.block_size} or less."
        )
    return base


def prepare_data(config: FitConfig):
    """The data module over the run's prepared dataset, and the data options that dataset holds
    (its recipe and client count), having refused options that contradict a `--data_dir`."""
    from data import ClientDataModule, prepare_recipe
    from data.prepare import fitted_note

    data = config.data
    folder = data.data_dir or prepare_recipe(
        data.recipe,
        num_clients=data.num_clients,
        seed=config.run.seed if data.split_seed is None else data.split_seed,
        progress=config.run.progress,
        pairing=data.pairing,
        volumes=data.volumes,
        separator=data.separator,
        **data.budgets(),
    )
    if config.attack.active:  # the bad clients join after the dataset's honest ones
        datamodule: ClientDataModule = AttackedDataModule(
            folder=folder, config=data, attack=config.attack, seed=config.run.seed, accumulate=config.optim.acc_steps
        )
    else:
        datamodule = ClientDataModule(
            folder=folder, config=data, seed=config.run.seed, accumulate=config.optim.acc_steps
        )
    note = fitted_note(datamodule.manifest)
    if note:
        print(note)
    return datamodule, data.resolved(datamodule.manifest)


def default_out(config: FitConfig, root: Path = RUNS_ROOT) -> Path:
    """`ROOT/DATASET[-nCLIENTS]/TRUST/seedSEED`, for a run without `--out`."""
    data = config.data
    dataset = data.dataset or (data.data_dir.name if data.data_dir else data.recipe)
    return run_dir(root, dataset, config.trust.strategy, config.run.seed, data.num_clients)


def check_resume(checkpoint: dict[str, Any], config: FitConfig, path: Path) -> None:
    """Refuse to resume a checkpoint made with options that change what the run computes."""
    saved, now = checkpoint[CONFIG_KEY], config.to_dict()
    diff = []
    for group, cls in FitConfig.groups().items():
        for f in dataclasses.fields(cls):
            before = saved.get(group, {}).get(f.name, now[group][f.name])  # an option added since: its default
            if not f.metadata.get("resume_free") and before != now[group][f.name]:
                diff.append(f"{flag_name(cls, f.name)} {before} (now {now[group][f.name]})")
    if diff:
        raise RunFolderError(
            f"{path} was made with other options: {'; '.join(diff)}. Fix: resume with the options "
            "the run started with (its config.yaml: --config), or choose another --out."
        )


def check_same_data(checkpoint: dict[str, Any], config: FitConfig, datamodule, path: Path) -> None:
    """Refuse to resume a checkpoint made on other data than the run's dataset gives now (its files
    edited since): a resume continues the run on the data it started on, or not at all. A checkpoint
    written before the data was recorded resumes as it did."""
    started = checkpoint.get(DATA_KEY)
    if started is None or started["digest"] == data_digest(datamodule.manifest):
        return
    source = config.data.data_dir or config.data.dataset
    raise RunFolderError(
        f"{path} was made on other data than {source} gives now: it changed since the run started (the run's "
        f"prepared data: {started['folder']}; now: {datamodule.data_dir}). Fix: restore {source} as it was to "
        f"resume, or start afresh on the data as it is now: delete {path}, or choose another --out."
    )


def run(config: FitConfig) -> dict[str, Any]:
    """Train, evaluate (at step 0 and every --eval_freq steps), and write config.yaml, metrics,
    trust matrices, checkpoints, adapters and, last, summary.json in the run folder; rerun after
    an interruption, it resumes from the checkpoint."""
    check_logger(config.run.logger)
    quiet_third_party()
    precision = resolve_precision(config.run.precision, device_type(config.run.accelerator))
    folder = RunFolder(config.run.out or default_out(config))
    if folder.finished():
        raise RunFolderError(
            f"{folder.path} already holds a finished run ({folder.summary.name}); choose another "
            "--out, or delete the folder to run again."
        )
    with folder.locked():
        checkpoint = read_checkpoint(folder.checkpoint) if folder.checkpoint.exists() else None
        base = load_base(config.run, config.data.sequence_length)  # a bad --init fails before data work
        datamodule, data = prepare_data(config)
        config = replace(config, data=data)
        if checkpoint is not None:
            check_resume(checkpoint, config, folder.checkpoint)
            check_same_data(checkpoint, config, datamodule, folder.checkpoint)
        said = config.warnings()
        dataset = dataset_summary(datamodule.data_dir, datamodule.manifest, config)
        for text in said:  # the data module says short evaluation splits as it reads them; the summary keeps both
            warnings.warn(text, stacklevel=2)
        folder.config.write_text(dump_config(config))
        folder.keep_until(checkpoint["global_step"] if checkpoint is not None else -1)

        L.seed_everything(config.run.seed, verbose=False)
        module = CollabLoRAModule(
            base=base,
            lora=config.lora,
            optim=config.optim,
            num_clients=datamodule.num_clients,
            seed=config.run.seed,
            memory=config.memory,
        )
        attack = (
            BatchedAttack(config.attack, datamodule.honest, config.run.seed, config.trust.token_source)
            if isinstance(datamodule, AttackedDataModule)
            else None
        )
        aggregation = TrustAggregation(settings=config.trust, folder=folder, seed=config.run.seed, attack=attack)
        saver = RunCheckpoint(
            folder.checkpoint,
            every=config.run.ckpt_freq or config.run.eval_freq,
            eval_every=config.run.eval_freq,
            config=config.to_dict(),
            data={"folder": str(datamodule.data_dir), "digest": data_digest(datamodule.manifest)},
        )
        trainer = L.Trainer(
            max_steps=config.optim.iterations,
            accelerator=config.run.accelerator,
            devices=config.run.devices,
            precision=precision,
            logger=make_logger(config.run.logger, folder.path),
            callbacks=[aggregation, saver, *([StepProgressBar()] if config.run.progress else [])],
            enable_checkpointing=False,
            val_check_interval=config.run.eval_freq * config.optim.acc_steps,
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            enable_progress_bar=config.run.progress,
            enable_model_summary=False,
            # metric states made by the step-0 evaluation stay usable in training's
            inference_mode=False,
            default_root_dir=folder.path,
        )
        start = time.time()
        try:
            if checkpoint is None:  # step 0: every client's model before fine-tuning, the base
                trainer.validate(module, datamodule=datamodule, verbose=False)
            trainer.fit(module, datamodule=datamodule, ckpt_path=folder.checkpoint if checkpoint is not None else None)
            if module.curves[-1]["step"] != trainer.global_step:
                trainer.validate(module, datamodule=datamodule, verbose=False)
        except SIGTERMException:  # Lightning's own exits 0, as if the run had finished
            saved = saver.saved_step if saver.saved_step >= 0 else checkpoint["global_step"] if checkpoint else None
            print(
                f"stopped by SIGTERM at step {trainer.global_step}; "
                + (
                    f"the checkpoint holds step {saved}: run the same command again to resume."
                    if saved is not None
                    else "no checkpoint yet: the same command starts the run afresh."
                ),
                file=sys.stderr,
            )
            raise SystemExit(128 + signal.SIGTERM) from None  # as a shell reports a death by SIGTERM
        for n in range(datamodule.num_clients):
            save_adapters(module.model, folder.adapters(n), adapters=n)
        summary = run_summary(
            folder=folder.path,
            config=config,
            runtime="batched",
            precision=precision,
            dataset=dataset,
            curves=module.curves,
            train_loss=module.train_curve,
            rounds=aggregation.history,
            warnings=said + (aggregation.rounds.warnings() if aggregation.rounds is not None else []),
            seconds=time.time() - start,
            **(
                {"attack": attack_summary(config.attack, attack.honest, module.curves[-1]["clients"], folder.trust)}
                if attack is not None
                else {}
            ),
        )
        folder.write_summary(summary)
        return summary


def main(argv: Sequence[str] | None = None) -> int:
    plain_warnings()
    try:
        summary = run(fit_command(__doc__).parse(argv))
    except FixableError as err:  # anything else is a bug (or out of memory): its traceback shows
        fail(err)
    print(format_outcome(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
