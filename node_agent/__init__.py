"""The node agent: probes the machine, runs tasks, and reports every change as an event."""
