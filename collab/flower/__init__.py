"""The collaborative method on real federated clients, through Flower (`pip install -e ".[flower]"`).

`client_app` (one client: its own data and adapter, `collab.fit`'s module and loss at N=1, `local`),
`server_app` (rounds, messages, bytes), `strategy` (the server's per-client state and personalised
trust aggregation with `collab.trust`'s families), `records` (every message's contents),
`token_union` (dynamic-token on a compact vocabulary). Run it with `python -m collab.flower.simulate`
(Flower's simulation runtime) or `python -m collab.flower.deploy` (its deployment runtime: a SuperLink
and one SuperNode per client, as processes on this machine).
"""

try:
    import flwr  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        'collab.flower needs Flower: pip install -e ".[flower]" (or pip install "flwr[simulation]").'
    ) from err
