"""Helpers that tests and tools share, so that tools never import from tests/.

* `servers`: real servers on 127.0.0.1 (OpenSSH sshd, moto S3, Ceph RGW), a cuttable TCP proxy.
* `rest_server`: a real `backupfs serve` subprocess.
* `cli`: the command line in a subprocess, as a user runs it (`CLI`, the tests' `PASSWORD`).
* `richtree`: a source tree with every kind of file and metadata, and rsync as the oracle.

Importable as `support` from pytest (pyproject's pythonpath has tools/) and from tools/*.py.
"""
