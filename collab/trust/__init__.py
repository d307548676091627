"""Trust strategies: which share of each peer's adapter every client takes when it aggregates.

Each family (`families`) says what it needs measured about a round's clients (`protocols.
Measurements`: nothing, their category mixture, their adapters, losses of chosen (data, adapter)
pairs, predictions on the shared reference text), turns the measurements into `scores`, and
scores into row-stochastic `[N, N]` trust; families are registered by name (`registry`), a user's
own through `register_family` in a `--trust_plugins` file. One round (`round.TrustRounds`) runs
them in every runtime: the batched run answers the measurements in process (`batched`), a
federated server with messages. The steps from measurements to scores (`scores`) and from scores
to trust and new adapters (`matrices`) are pure functions.
"""

from .adaptive import FedFomo, LearnedTrust, OwnVersusAverage, RowTrust
from .batched import BatchedMeasurements
from .families import (
    AdapterSimilarity,
    FedAvg,
    FixedTrust,
    Local,
    PairScoredTrust,
    PeerLoss,
    ScoredTrust,
    StaticMixture,
    TokenAgreement,
    TrustFamily,
    build_family,
)
from .matrices import (
    Selection,
    aggregate,
    collapse,
    exclude_nonfinite,
    finite_clients,
    overlap,
    row_normalize,
    trust_quality,
    usable_clients,
)
from .peers import PeerSampling
from .protocols import ClientData, CollaborativeModel, Measurements
from .registry import ALIASES, FAMILIES, Strategy, register_family, strategy_names
from .robust import FedMedian, FedTrimmedAvg, Krum
from .round import RoundOutcome, TrustRounds
from .scores import (
    PEER_LOSS_SCORES,
    SIMILARITIES,
    STATIC_RULES,
    TOKEN_DISTANCES,
    TokenMeasure,
    TopLogits,
    TopProbabilities,
    own_mixture,
    row_cosine,
    token_measure,
    token_scores,
    update_cosine,
)
from .settings import TrustSettings

__all__ = [
    "ALIASES",
    "FAMILIES",
    "PEER_LOSS_SCORES",
    "SIMILARITIES",
    "STATIC_RULES",
    "TOKEN_DISTANCES",
    "AdapterSimilarity",
    "BatchedMeasurements",
    "ClientData",
    "CollaborativeModel",
    "FedAvg",
    "FedFomo",
    "FedMedian",
    "FedTrimmedAvg",
    "FixedTrust",
    "Krum",
    "LearnedTrust",
    "Local",
    "Measurements",
    "OwnVersusAverage",
    "PairScoredTrust",
    "PeerLoss",
    "PeerSampling",
    "RoundOutcome",
    "RowTrust",
    "ScoredTrust",
    "Selection",
    "StaticMixture",
    "Strategy",
    "TokenAgreement",
    "TokenMeasure",
    "TopLogits",
    "TopProbabilities",
    "TrustFamily",
    "TrustRounds",
    "TrustSettings",
    "aggregate",
    "build_family",
    "collapse",
    "exclude_nonfinite",
    "finite_clients",
    "overlap",
    "own_mixture",
    "register_family",
    "row_cosine",
    "row_normalize",
    "strategy_names",
    "token_measure",
    "token_scores",
    "trust_quality",
    "update_cosine",
    "usable_clients",
]
