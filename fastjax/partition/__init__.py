"""Partition stage: client splits (`make_partition`), reports, and the labeled seed."""

from fastjax.partition.report import format_table, partition_report, write_report
from fastjax.partition.schemes import PARTITIONS, ROUNDINGS, make_partition
from fastjax.partition.seed import central_seed, labeled_pools, split_seed
from fastjax.partition.types import ClientPool, Oracle, Partition

__all__ = ["PARTITIONS", "ROUNDINGS", "ClientPool", "Oracle", "Partition", "central_seed", "format_table",
           "labeled_pools", "make_partition", "partition_report", "split_seed", "write_report"]
