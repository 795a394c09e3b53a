"""The run planner: size a Stage 2 run before it queues (``python -m stage2_train.plan``).

    __main__   the command: config + overrides + GPU -> the plan as a table or JSON
    probe      one rank's step on fake tensors and a fake process group, per AC mode and batch
    step       building the real model through the project's parallelize code, one training step
    memory     what the step holds at its peak, by kind (parameters, gradients, optimizer state, …)
    sizing     peak envelope over the batch, usable memory, communication, checkpoint, roofline
    planner    the whole plan for a config and its GPUs
    report     the plan as a table
    check      preflight's quick answer: the recorded fits (fits.json), else a fake-tensor probe
"""
