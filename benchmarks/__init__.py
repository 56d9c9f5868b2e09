"""``make bench``: the course's trainers, lessons and grader measured side by side.

One module per benchmark, each with ``run(quick=False, ...) -> dict`` whose ``rows`` feed the
printed table; ``python -m benchmarks.run`` runs them and writes ``build/bench.json``. Compared variants run in
interleaved rounds and the figures are median per-round ratios, wall clock and CPU seconds
(``benchmarks.common``), so that a machine shared with other work hits every variant alike.

    dpo_vs_trl    preflab.dpo.train_dpo (as shipped, each switch off, packing on) against TRL's
                  DPOTrainer, tiny model and GPT-2 small's shape (pairs/s and per CPU-s, same loss)
    dpo_speedups  each speed switch against the shipped trainer, and prototypes of further ones
    course        each lesson's runtime and peak memory from build/course.json (`make course`)
    grading       `make grade` with 1 and 2 workers against a loop of `nbgrader autograde`
    colab         one DPO and one PPO step at GPT-2 size (124M, random weights), CPU or CUDA
"""
