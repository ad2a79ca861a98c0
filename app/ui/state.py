"""What every visitor shares: loaded models, known scenes, the example presets, the job runner."""

from __future__ import annotations

import hmac
import os
import time

import gradio as gr

from ..models import EMBEDDED, Models, operator_models
from ..names import model_name
from ..scenes import SceneRegistry

ADMIN_ENV = "ADAPT_ADMIN_TOKEN"
MODEL_ENV = "ADAPT_MODEL"


class App:
    """State shared by every visitor: loaded models, known scenes, the job runner."""

    def __init__(self, model: str | None = None, admin_token: str | None = None, jobs_root=None,
                 max_jobs: int = 1, warm: bool = True):
        from ..examples import load_presets, register_presets

        self.default_model = Models.key(model or os.environ.get(MODEL_ENV) or EMBEDDED)
        self.models = Models(self.default_model, resolve=self.resolve_backbone,
                             offered=self.offered_models)
        self.scenes = SceneRegistry()
        self.presets = load_presets()
        register_presets(self.scenes, self.presets)
        self.admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_ENV)
        self.admin_token = (self.admin_token or "").strip() or None
        self.runner = None
        if self.admin_token:
            from ..jobs import JobRunner, default_root

            self.runner = JobRunner(jobs_root or default_root(), max_running=max_jobs)
        if warm:
            seen, examples = set(), []
            for e in self.presets:  # one image per distinct question fills its bias map
                if e["question"] not in seen:
                    seen.add(e["question"])
                    examples.append((e["path"], e["question"]))
            self.models.warm(examples)

    def offered_models(self) -> list[str]:
        """The models a visitor may choose, as the server knows them: the default, the embedded model,
        the operator's ``$ADAPT_MODELS``, then the tuned models (shipped, and those of finished training
        jobs) to compare with their base. The only names :meth:`Models.get` loads (unless
        ``$ADAPT_ALLOW_ANY_MODEL``)."""
        from ..trainjob import tuned_models

        plain = [self.default_model, EMBEDDED, *operator_models()]
        return list(dict.fromkeys(plain + [v for _, v in tuned_models(self.runner)]))

    def backbone_choices(self) -> list[tuple[str, str]]:
        """(label, value) of :meth:`offered_models` for the backbone box: a local folder by its shown
        name (:func:`app.names.model_name`), never the server's path; Models takes either."""
        from ..trainjob import tuned_models

        labels = dict((v, label) for label, v in tuned_models(self.runner))
        out = {}
        for v in self.offered_models():
            shown = model_name(v)
            out.setdefault(shown, (labels.get(v, shown), shown))
        return list(out.values())

    @property
    def default_choice(self) -> str:
        """The backbone box's first value: the default model by its shown name."""
        return model_name(self.default_model)

    @property
    def any_model(self) -> bool:
        """Whether visitors may type any folder or hub id (the operator's ``$ADAPT_ALLOW_ANY_MODEL``)."""
        return self.models.allow_any

    def resolve_backbone(self, name: str) -> str:
        """What the model cache loads for a backbone choice (a tuned model's name → its folder)."""
        from adapt.backbones import BackboneError

        from ..jobs import JobError
        from ..trainjob import resolve

        try:
            return resolve(name, self.runner)
        except JobError as exc:
            raise BackboneError(str(exc)) from None

    def token_ok(self, token: str | None) -> bool:
        return bool(self.admin_token and self.runner and token
                    and hmac.compare_digest(str(token).strip().encode(), self.admin_token.encode()))

    def check_admin(self, token: str | None) -> None:
        if not self.admin_token or not self.runner:
            raise gr.Error("The admin tab is disabled on this server.", print_exception=False)
        if not self.token_ok(token):
            time.sleep(0.5)  # slows down guessing
            raise gr.Error("Admin token refused.", print_exception=False)

    def default_question(self) -> str:
        if self.presets:
            return self.presets[0]["question"]
        try:
            from adapt.world.language import DEFAULT_DESCRIBE_PROMPT

            return DEFAULT_DESCRIBE_PROMPT
        except ImportError:
            return "describe the image in detail."
