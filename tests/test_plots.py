"""What the plots show, read off the matplotlib figures they save: accuracy axes from 0
(noise must not look like a collapse), a label for every client on the partition heatmap
(every k-th past 40 clients, said on the axis), named axes on the scaling plot."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.figure  # noqa: E402


@pytest.fixture
def saved(monkeypatch):
    """The figures the code under test saves (nothing is written to disk)."""
    figs = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figs.append(self))
    return figs


def test_accuracy_axes_start_at_zero(saved, tmp_path):
    from fastjax.federate.engine import plot_history

    hist = [{"round": r, "accuracy": 0.61 + 0.005 * (r % 2), "comm_mib": 1.5 * r} for r in range(1, 9)]
    plot_history(hist, tmp_path / "accuracy.png")
    (fig,) = saved
    assert [ax.get_ylim() for ax in fig.axes] == [(0.0, 1.0), (0.0, 1.0)]


@pytest.mark.parametrize("clients, labels", [(12, [str(i) for i in range(12)]),
                                             (100, [str(i) for i in range(0, 100, 3)])])
def test_partition_heatmap_labels_every_client_or_every_kth(saved, tmp_path, clients, labels):
    from fastjax.partition.report import write_report

    counts = np.arange(clients * 3).reshape(clients, 3) % 7
    report = {"scheme": "dirichlet", "class_names": ["a", "b", "c"], "class_counts": counts.tolist()}
    write_report(report, tmp_path)
    ax = saved[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert ax.get_ylabel() == ("client" if clients <= 40 else "client (one label every 3)")


def test_scaling_plot_names_its_axes(saved, tmp_path):
    from benchmarks.client_scaling import plot

    rows = [{"strategy": "vmap", "clients": k, "devices": 1, "sec_per_round": 0.1 * k,
             "sec_per_client": 0.1, "peak_device_bytes": None, "peak_rss_bytes": 2**30} for k in (2, 4)]
    plot(rows, tmp_path / "s.png")
    (fig,) = saved
    axes = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_ylabel() for ax in axes] == ["seconds per round", "ms per client", "peak memory (GiB)"]
    assert all(ax.get_ylim()[0] == 0 for ax in axes) and fig._suptitle.get_text()


def test_reliability_bins_are_evenly_spaced_and_labelled_by_their_edges(saved, tmp_path):
    """MNIST-like: nearly every weak label in the top vote-share bin and the margin deciles
    squeezed near 0 and 2; each bin still gets its own slot, its edges as the label."""
    from fastjax.label.quality import plot_reliability

    def table(count, precision):
        return {"count": count, "precision": precision, "precision_after": precision,
                "mean_confidence": [None] * len(count)}

    share_count = [0] * 9 + [990]
    margin_edges = [0.001, 0.002, 0.003, 0.004, 0.005, 1.9, 1.91, 1.92, 1.93, 1.94, 1.95]
    quality = {"vote_share": {"edges": [i / 10 for i in range(11)],
                              "overall": table(share_count, [None] * 9 + [0.99]),
                              "clients": [table(share_count, [None] * 9 + [1.0])]},
               "proto_margin": {"edges": margin_edges, "overall": table([99] * 10, [0.9] * 10),
                                "clients": []},
               "refinement": {"oracle_labeled": 10, "corrected": 1}}
    plot_reliability(quality, str(tmp_path / "r.png"))
    share_ax, margin_ax = [ax for ax in saved[0].axes if ax.get_ylabel() == "precision"]
    for ax in (share_ax, margin_ax):
        assert [t.get_position()[0] for t in ax.get_xticklabels()] == list(range(10))
    assert share_ax.get_xticklabels()[-1].get_text() == "0.9-1"
    assert [t.get_text() for t in margin_ax.get_xticklabels()[4:6]] == ["0.005-1.9", "1.9-1.91"]
    bars = [b for ax in saved[0].axes for b in ax.patches if b.get_height() > 0]
    assert {round(b.get_width(), 6) for b in bars} == {0.8}  # visible, never overlapping
