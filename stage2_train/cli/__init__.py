"""The command line: which arguments ``python -m stage2_train`` takes, and its --help."""
