"""hakurun: run a command once for every combination of its span arguments, on this machine."""
