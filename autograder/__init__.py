"""The course's autograder: release (solutions/ → exercises/) and batch grading on top of nbgrader.

    python -m autograder.release            regenerate exercises/ from solutions/
    python -m autograder.release --check    fail when exercises/ drifted from solutions/
    python -m autograder.grade SUBMISSIONS --out OUT [--workers N]
"""
