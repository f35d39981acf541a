"""The assembly layer: settings in, what each role needs out (`assemble`), the server side of a run
(`build_server`), a remote site (`build_site`), the centralized baseline and `fedmm info`. It never imports a
runtime: runtimes import it."""

from fedmm.experiment.assemble import Parts, assemble, count_clients, load_data, split_clients  # noqa: F401
from fedmm.experiment.server import Federation, build_server, server_metrics  # noqa: F401
from fedmm.experiment.site import Site, build_site  # noqa: F401
