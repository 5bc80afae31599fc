"""Simulated sensor nodes: signal physics (``physics``), scenarios (``scenario``), nodes with
their own frame encoder (``node``), sensor faults (``sensor_faults``), transports
(``transports``) and the ``foreshock sim`` command (``cli``).

Public API: ``Scenario.load(path_or_name)``, ``SimNode(scenario, device_id, seed=, channel=)``
with ``next_frame_bytes()``, ``failure_at_s`` and ``health``; ``NodeSource(node, realtime,
speed)`` (an agent ``Source``); ``fleet(scenario)``; all in :mod:`firmware_sim.node`.
"""
