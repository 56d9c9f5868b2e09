# nbgrader configuration for the course. The repository root is the nbgrader course root:
# solutions/<exercise>/<exercise>.ipynb are the sources (solutions and hidden tests) and
# exercises/<exercise>/<exercise>.ipynb the released student versions.
#
# `python -m autograder.release` and `python -m autograder.grade` load this file and then
# point the course root at scratch folders of their own; run nbgrader's own commands (for
# example `nbgrader formgrader`) from the autograder/ folder to use it as it is.
import os

c = get_config()  # noqa: F821 - provided by nbgrader when it loads this file

_here = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.root = os.path.dirname(_here)
c.CourseDirectory.course_id = "preflab"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "exercises"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_here, "work", "gradebook.db")

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
# Per cell; the grader adds a watchdog per submission on top (see autograder/grade.py).
c.Execute.timeout = 30
c.Execute.interrupt_on_timeout = True
