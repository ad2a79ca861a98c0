"""Test-only helpers for the task runner: a method that answers from a script and can stop mid-run."""

from __future__ import annotations

from adapt.methods.base import Answer, Method


class Stop(KeyboardInterrupt):
    """Raised by :class:`ScriptedMethod` to interrupt a run like Ctrl-C would."""


class ScriptedMethod(Method):
    """Answers ``script(question, image)``; after ``stop_after`` calls of ``answer_batch`` it raises
    :class:`Stop`. ``asked`` collects every question it answered."""

    def __init__(self, script, name="scripted", stop_after=None):
        self.script, self.name, self.stop_after = script, name, stop_after
        self.calls, self.asked = 0, []

    def answer_batch(self, backbone, images, questions, max_new_tokens, **kw):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise Stop()
        self.calls += 1
        self.asked += list(questions)
        return self._answer_group(backbone, images, questions, max_new_tokens)  # no grid grouping: no model

    def _answer_group(self, backbone, images, questions, max_new_tokens, **kw):
        return [Answer(self.script(q, im), [], {"tokens": 1}) for q, im in zip(questions, images)]


class NoBackbone:
    """Stands in for a backbone when the method does not use one."""

    name = "none"
