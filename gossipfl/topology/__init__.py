"""Communication topologies for gossip: graphs, mixing weights, schedules, spectra.

The gossip engine needs one object, :class:`Topology`, which answers "whose models does
node i receive in round t, with which weights, and to whom does it send?" in O(degree).
Build one with :func:`build_topology` from a family name (``"torus"``, ``"base-k"``,
``"epidemic"``, ...), a shipped name (``"torus-8x8"``; see :func:`list_topologies`) or a
file, or wrap any undirected networkx graph with :meth:`Topology.from_graph`.

Around it:

* :mod:`~gossipfl.topology.generators` — one plain function per static graph family;
* :mod:`~gossipfl.topology.mixing` — Metropolis–Hastings and max-degree weights, checks;
* :mod:`~gossipfl.topology.spectral` — spectral gap (dense or sparse) and predicted rounds;
* :mod:`~gossipfl.topology.schedules` and :mod:`~gossipfl.topology.base_graph` —
  time-varying graphs (one-peer exponential, Base-(k+1), Epidemic Learning);
* :func:`measure_consensus_rate` — the measured counterpart of the spectral gap;
* :func:`attach_byzantine` and :func:`placement_report` — Byzantine placement and the
  local-majority test.

See docs/topologies.md for the families, formulas and file formats.
"""

from __future__ import annotations

from gossipfl.topology.build import build_topology
from gossipfl.topology.byzantine import (
    PlacementReport,
    PlacementRow,
    attach_byzantine,
    placement_report,
)
from gossipfl.topology.consensus import ConsensusMeasurement, measure_consensus_rate
from gossipfl.topology.families import FAMILIES, Family, Param, family_names, get_family
from gossipfl.topology.files import ShippedTopology, list_topologies, load_graph_file
from gossipfl.topology.generators import (
    complete_graph,
    dumbbell_graph,
    erdos_renyi_graph,
    exponential_graph,
    hypercube_graph,
    random_regular_graph,
    ring_graph,
    small_world_graph,
    star_graph,
    torus_graph,
    two_castle_graph,
)
from gossipfl.topology.mixing import (
    check_mixing_matrix,
    is_doubly_stochastic,
    is_symmetric,
    max_degree_weights,
    metropolis_hastings_weights,
    mixing_matrix_for,
)
from gossipfl.topology.spectral import (
    fiedler_vector,
    predicted_rounds,
    second_largest_eigenvalue_modulus,
    spectral_gap,
)
from gossipfl.topology.summary import describe_topology
from gossipfl.topology.topology import Topology

__all__ = [
    "FAMILIES",
    "ConsensusMeasurement",
    "Family",
    "Param",
    "PlacementReport",
    "PlacementRow",
    "ShippedTopology",
    "Topology",
    "attach_byzantine",
    "build_topology",
    "check_mixing_matrix",
    "complete_graph",
    "describe_topology",
    "dumbbell_graph",
    "erdos_renyi_graph",
    "exponential_graph",
    "family_names",
    "fiedler_vector",
    "get_family",
    "hypercube_graph",
    "is_doubly_stochastic",
    "is_symmetric",
    "list_topologies",
    "load_graph_file",
    "max_degree_weights",
    "measure_consensus_rate",
    "metropolis_hastings_weights",
    "mixing_matrix_for",
    "placement_report",
    "predicted_rounds",
    "random_regular_graph",
    "ring_graph",
    "second_largest_eigenvalue_modulus",
    "small_world_graph",
    "spectral_gap",
    "star_graph",
    "torus_graph",
    "two_castle_graph",
]
