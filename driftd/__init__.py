"""driftd: configuration-drift detection for fleets managed with Ansible.

The engine (collect, snapshot, baseline, compare, store, scan) is a library;
``driftd.cli`` and the daemon are thin shells over it.
"""

__version__ = "0.1.0"
