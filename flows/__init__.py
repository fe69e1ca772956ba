# Every process that runs this engine's flows imports this package first (the CLI, the event API's
# drain, a worker's flow run): Prefect's clients share one TLS context per CA file from here on.
from flows.tls import share_prefect_tls

share_prefect_tls()
