"""Recompilation guards: every step function is traced once per shape in a whole run (a
retrace per step or per evaluation would cost minutes on an accelerator)."""
import train_utils as tu
from uniemox_jax import train
from uniemox_jax.evaluators import classification
from uniemox_jax.train import finetune, pretrain


def _count_traces(monkeypatch, module, name) -> list[list[str]]:
  """Replaces `module.name` (a step-function factory) so that each step function it makes
  records every trace of its body; returns one list of traces per step function made."""
  original = getattr(module, name)
  made = []

  def make(*args, **kwargs):
    fn = original(*args, **kwargs)
    traces = []
    made.append(traces)

    def counted(*a, **k):
      traces.append(name)  # runs only while jax traces the function, never per call
      return fn(*a, **k)

    return counted

  monkeypatch.setattr(module, name, make)
  return made


def test_pretraining_traces_its_step_once(demo_env, tmp_path, monkeypatch):
  made = _count_traces(monkeypatch, pretrain, "make_train_step")
  result = train.run(tu.pretrain_config(demo_env, total_steps=6), str(tmp_path))
  assert result["status"] == "done"
  assert [len(t) for t in made] == [1]


def test_finetuning_traces_train_and_eval_steps_once_each(demo_env, tmp_path, monkeypatch):
  train_steps = _count_traces(monkeypatch, finetune, "make_train_step")
  eval_steps = _count_traces(monkeypatch, classification, "make_eval_step")
  # 6 steps, 3 per epoch: val is evaluated after epochs 1 and 2, then the best on test.
  config = tu.finetune_config(demo_env, total_steps=6)
  evaluations = []
  original_call = classification.Evaluator.__call__

  def call(self, params):
    evaluations.append(self.split)
    return original_call(self, params)

  monkeypatch.setattr(classification.Evaluator, "__call__", call)
  assert train.run(config, str(tmp_path))["status"] == "done"
  assert evaluations.count("val") >= 2 and evaluations.count("test") == 1
  assert [len(t) for t in train_steps] == [1]
  assert [len(t) for t in eval_steps] == [1, 1]  # the val and the test evaluator
