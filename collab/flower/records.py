"""What crosses the network, in Flower's records: adapters, measurements, and their size.

Every message of the app is built here, so the bytes the summary reports and docs/flower.md's table
come from the very records a run sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from ..trust import TokenMeasure, token_measure
from ..trust.protocols import Part

ADAPTER, PEERS, LOSSES, IDS, VALUES, MEASURE = "adapter", "peers", "losses", "ids", "values", "measure"


def content_bytes(content: RecordDict) -> int:
    """Bytes of a message's records: array data, keys and values, as Flower's `message_size_mod` counts them."""
    return sum(record.count_bytes() for record in content.values())


def message_bytes(message: Message) -> int:
    return content_bytes(message.content)


def megabytes(n: float) -> str:
    """Bytes as people read them: MB from 10 kB up, else whole bytes."""
    return f"{n / 1e6:,.2f} MB" if n >= 10_000 else f"{n:,.0f} B"


def arrays(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    return dict(record.to_torch_state_dict())


def sequence_arrays(parts: Sequence[torch.Tensor]) -> ArrayRecord:
    """One array per reference sequence, keyed by its index."""
    return arrays({str(s): t for s, t in enumerate(parts)})


def sequence_tensors(record: ArrayRecord) -> list[torch.Tensor]:
    parts = tensors(record)
    return [parts[str(s)] for s in range(len(parts))]


def peers_arrays(adapters: Mapping[int, Mapping[str, torch.Tensor]]) -> ArrayRecord:
    """Several clients' adapters in one record, keyed `CLIENT/NAME`."""
    return arrays({f"{n}/{name}": t for n, adapter in adapters.items() for name, t in adapter.items()})


def peers_tensors(record: ArrayRecord) -> dict[int, dict[str, torch.Tensor]]:
    out: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors(record).items():
        n, _, name = key.partition("/")
        out.setdefault(int(n), {})[name] = t
    return out


# --- the messages' contents, server -> client and back


def train_content(first: int, last: int, adapter: Mapping[str, torch.Tensor] | None, reset: bool) -> RecordDict:
    """Train from step `first` to `last`, from `adapter` where the client does not hold its own yet."""
    content = RecordDict({"config": ConfigRecord({"first": first, "last": last, "reset": reset})})
    if adapter is not None:
        content[ADAPTER] = arrays(adapter)
    return content


def train_reply(adapter: Mapping[str, torch.Tensor], start: int, losses: Sequence[float]) -> RecordDict:
    """The trained adapter, the step training started from, and each step's loss."""
    return RecordDict(
        {ADAPTER: arrays(adapter), "metrics": MetricRecord({"start": start, "loss": [float(x) for x in losses]})}
    )


def hello_reply(client: int, mixture: Sequence[float], step: int) -> RecordDict:
    """Who the node is: its client id, its data's category shares (for `static`), its state's step (-1: none)."""
    return RecordDict(
        {"client": ConfigRecord({"client": client, "mixture": [float(x) for x in mixture], "step": step})}
    )


def peer_losses_content(
    peers: Mapping[int, Mapping[str, torch.Tensor]], order: Sequence[int], part: Part | None = None
) -> RecordDict:
    """dynamic-ref: the peers' adapters to score on the client's own `trust` split (its `part` of the
    batches; None: all), in `order`."""
    config = ConfigRecord({"order": list(order)})
    if part is not None:
        config["part"] = list(part)
    return RecordDict({PEERS: peers_arrays(peers), "config": config})


def losses_reply(losses: torch.Tensor) -> RecordDict:
    return RecordDict({LOSSES: arrays({LOSSES: losses.float()})})


def measure_record(measure: TokenMeasure) -> ConfigRecord:
    return ConfigRecord({"distance": measure.name, "top_k": measure.top_k})


def ref_top_content(measure: TokenMeasure) -> RecordDict:
    """Reference predictions, first exchange: the `measure` to predict with; the client sends its top ids."""
    return RecordDict({MEASURE: measure_record(measure)})


def ref_union_content(union: Sequence[torch.Tensor], measure: TokenMeasure) -> RecordDict:
    """Reference predictions, second exchange: each reference sequence's union of top token ids."""
    return RecordDict({IDS: sequence_arrays(union), MEASURE: measure_record(measure)})


def ref_reply(key: str, parts: Sequence[torch.Tensor]) -> RecordDict:
    """dynamic-token: the client's top ids (`IDS`) or its predictions on the union (`VALUES`), per sequence."""
    return RecordDict({key: sequence_arrays(parts)})


def evaluate_content(adapter: Mapping[str, torch.Tensor] | None) -> RecordDict:
    """Evaluate the client's adapter: `adapter`, its average, where it does not hold it yet (it keeps it)."""
    return RecordDict({ADAPTER: arrays(adapter)} if adapter is not None else {})


def metrics_reply(metrics: Mapping[str, float], kept: bool) -> RecordDict:
    """Validation metrics, and whether the client kept the adapter it was sent as its own."""
    return RecordDict(
        {
            "metrics": MetricRecord({k: float(v) for k, v in metrics.items()}),
            "kept": ConfigRecord({"kept": kept}),
        }
    )


# --- reading the contents back, each value as the type its writer above puts in (Flower types a
# record's values as any of the types a record may hold)


def _int(value: object) -> int:
    if not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number in the record, got {value!r}.")
    return int(value)


def _float(value: object) -> float:
    if not isinstance(value, (int, float, str)):
        raise TypeError(f"expected a number in the record, got {value!r}.")
    return float(value)


def _list(value: object) -> list:
    if not isinstance(value, list):
        raise TypeError(f"expected a list in the record, got {value!r}.")
    return value


def adapter(content: RecordDict) -> dict[str, torch.Tensor] | None:
    """The adapter a `train_content`, `evaluate_content` or `train_reply` carries (None: none sent)."""
    return tensors(content.array_records[ADAPTER]) if ADAPTER in content else None


def train_request(content: RecordDict) -> tuple[int, int, dict[str, torch.Tensor] | None, bool]:
    """`train_content`'s first and last step, adapter and reset."""
    config = content.config_records["config"]
    return _int(config["first"]), _int(config["last"]), adapter(content), bool(config["reset"])


def train_result(content: RecordDict) -> tuple[dict[str, torch.Tensor], int, list[float]]:
    """`train_reply`'s adapter, start step and step losses."""
    metrics = content.metric_records["metrics"]
    return (
        tensors(content.array_records[ADAPTER]),
        _int(metrics["start"]),
        [_float(x) for x in _list(metrics["loss"])],
    )


def hello(content: RecordDict) -> tuple[int, list[float], int]:
    """`hello_reply`'s client id, mixture and step."""
    who = content.config_records["client"]
    return _int(who["client"]), [_float(x) for x in _list(who["mixture"])], _int(who["step"])


def peer_losses_request(
    content: RecordDict,
) -> tuple[dict[int, dict[str, torch.Tensor]], list[int], Part | None]:
    """`peer_losses_content`'s peers' adapters, their order and the part of the split."""
    config = content.config_records["config"]
    order = [_int(n) for n in _list(config["order"])]
    if "part" not in config:
        return peers_tensors(content.array_records[PEERS]), order, None
    i, n = (_int(v) for v in _list(config["part"]))
    if not 0 <= i < n:
        raise ValueError(f"a peer_losses query's part must be (i, n) with 0 <= i < n, got ({i}, {n})")
    return peers_tensors(content.array_records[PEERS]), order, (i, n)


def losses(content: RecordDict) -> torch.Tensor:
    """`losses_reply`'s losses."""
    return tensors(content.array_records[LOSSES])[LOSSES]


def sequences(content: RecordDict, key: str) -> list[torch.Tensor]:
    """The per-sequence tensors of `ref_union_content` (`IDS`) or `ref_reply` (`key`)."""
    return sequence_tensors(content.array_records[key])


def measure(content: RecordDict) -> TokenMeasure:
    """The measure a `ref_top_content` or `ref_union_content` asks for."""
    record = content.config_records[MEASURE]
    return token_measure(str(record["distance"]), _int(record["top_k"]))


def metrics(content: RecordDict) -> tuple[dict[str, float], bool]:
    """`metrics_reply`'s metrics and whether the client kept its adapter."""
    return {k: _float(v) for k, v in content.metric_records["metrics"].items()}, bool(
        content.config_records["kept"]["kept"]
    )
