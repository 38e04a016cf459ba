"""The post's U-Net, forward at 572 in fp32, in other CPU inference engines against ours
(``pytest benchmarks --peers -s``): alternating rounds in one process, medians, each engine's
output checked against ours. ``unet-fast bench --peers`` prints the same table."""

from unet_fast import peers

from conftest import rounds


def test_peers_forward_572():
    timings = peers.compare(size=572, rounds=rounds(5))
    print("\n" + peers.format_table(timings, 572))
    for timing in timings:
        assert timing.ms is None or timing.agrees, (timing.name, timing.difference)
