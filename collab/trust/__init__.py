"""Trust strategies: which share of each peer's adapter every client takes when it aggregates.

Each family (`families`) is a small object with `scores` (how much client i should trust client
j) and `to_trust` (scores -> row-stochastic `[N, N]` trust), registered by name. What a family
reads of the model and the data is written down in `protocols`; the steps from measurements to
scores (`scores`) and from scores to trust and new adapters (`matrices`) are pure functions, so
the Lightning callback (`collab.aggregation`) and a federated server run the same method.
"""

from .families import (
    FAMILIES,
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
)
from .matrices import (
    Selection,
    aggregate,
    exclude_nonfinite,
    finite_clients,
    overlap,
    row_normalize,
    trust_quality,
    usable_clients,
)
from .peers import PeerSampling
from .protocols import ClientData, CollaborativeModel
from .scores import (
    PEER_LOSS_SCORES,
    SIMILARITIES,
    STATIC_RULES,
    TOKEN_DISTANCES,
    TopLogits,
    TopProbabilities,
    own_mixture,
    row_cosine,
    token_scores,
    update_cosine,
)
from .settings import ALIASES, STRATEGIES, Strategy, TrustSettings, build_family

__all__ = [
    "ALIASES",
    "FAMILIES",
    "PEER_LOSS_SCORES",
    "SIMILARITIES",
    "STATIC_RULES",
    "STRATEGIES",
    "TOKEN_DISTANCES",
    "AdapterSimilarity",
    "ClientData",
    "CollaborativeModel",
    "FedAvg",
    "FixedTrust",
    "Local",
    "PairScoredTrust",
    "PeerLoss",
    "PeerSampling",
    "ScoredTrust",
    "Selection",
    "StaticMixture",
    "Strategy",
    "TokenAgreement",
    "TopLogits",
    "TopProbabilities",
    "TrustFamily",
    "TrustSettings",
    "aggregate",
    "build_family",
    "exclude_nonfinite",
    "finite_clients",
    "overlap",
    "own_mixture",
    "row_cosine",
    "row_normalize",
    "token_scores",
    "trust_quality",
    "update_cosine",
    "usable_clients",
]
