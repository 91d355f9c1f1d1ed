"""Published continual-learning protocols, runnable with ``forgetless reproduce NAME``.

One module per source (:mod:`.van_de_ven_2019`, :mod:`.der_2020`, :mod:`.cl_baselines`), each a
list of :class:`~forgetless.reproduce.protocol.Protocol` records; :mod:`.registry` collects them.
"""

from forgetless.reproduce.protocol import Measured, Protocol, Published
from forgetless.reproduce.registry import PROTOCOLS, Outcome, get_protocol, markdown, run_protocol

__all__ = ["PROTOCOLS", "Measured", "Outcome", "Protocol", "Published", "get_protocol", "markdown", "run_protocol"]
