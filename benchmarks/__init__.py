"""``make bench``: the course's trainers, lessons and grader measured side by side.

One module per benchmark, each with ``run(quick=False, ...) -> dict`` whose ``rows`` feed the
printed table; ``python -m benchmarks.run`` runs them and writes ``build/bench.json``.

    dpo_vs_trl    preflab.dpo.train_dpo against TRL's DPOTrainer (pairs/s, same loss)
    dpo_speedups  the same trainer with each speed switch off, and prototypes of further ones
    course        each lesson's runtime and peak memory from build/course.json (`make course`)
    grading       `make grade` with 1 and 2 workers against a loop of `nbgrader autograde`
    colab         one DPO and one PPO step at GPT-2 size (124M, random weights), CPU or CUDA
"""
