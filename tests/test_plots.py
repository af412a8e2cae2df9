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
