"""``patch()`` covers names imported before it: globals of any loaded module (``__main__`` after
``from rsatoolbox.rdm import calc_rdm, compare``, a user's module, aliases) that are rsatoolbox's
originals run the drop-in while patched and are rsatoolbox's again after ``unpatch()``; names
the module rebound meanwhile, modules that imported the drop-in themselves and l2bg's own modules
are left alone; a module whose namespace is read-only gets one warning naming the reference."""

import sys
import types
import warnings

import pytest

pytest.importorskip("rsatoolbox")

import l2bg.rsa.rsatoolbox as fast  # noqa: E402
from l2bg.base.errors import L2BGWarning  # noqa: E402
from l2bg.rsa.rsatoolbox.options import original  # noqa: E402


@pytest.fixture
def unpatched():
    """Every test starts and ends unpatched."""
    assert not fast.is_patched()
    yield
    if fast.is_patched():
        fast.unpatch()


def user_module(monkeypatch, name: str, **globals_: object) -> types.ModuleType:
    """A module loaded before patch() (as a script's imports make one), in sys.modules."""
    module = types.ModuleType(name)
    vars(module).update(globals_)
    monkeypatch.setitem(sys.modules, name, module)
    return module


@pytest.mark.parametrize("holder", ["__main__", "user_analysis"])
def test_names_imported_before_patch_are_rebound_and_restored(monkeypatch, unpatched, holder):
    """``from rsatoolbox.rdm import calc_rdm, compare`` (and an alias) before patch(): the
    drop-in's while patched, rsatoolbox's own objects after unpatch()."""
    calc, comp = original("calc_rdm"), original("compare")
    if holder == "__main__":
        main = sys.modules["__main__"]
        for attr, value in (("calc_rdm", calc), ("compare", comp), ("my_compare", comp)):
            monkeypatch.setattr(main, attr, value, raising=False)
        module = main
    else:
        module = user_module(monkeypatch, holder, calc_rdm=calc, compare=comp, my_compare=comp)
    with fast.patch():
        assert module.calc_rdm is fast.calc_rdm
        assert module.compare is fast.compare and module.my_compare is fast.compare
    assert module.calc_rdm is calc and module.compare is comp and module.my_compare is comp


def test_unpatch_restores_exactly_what_patch_rebound(monkeypatch, unpatched):
    """A name the module rebound while patched keeps its new object; a module that imported the
    drop-in itself keeps it; l2bg's own modules hold rsatoolbox's originals on purpose and are
    never rebound."""
    calc, comp = original("calc_rdm"), original("compare")
    before = user_module(monkeypatch, "user_before", calc_rdm=calc, compare=comp)
    ours = user_module(monkeypatch, "l2bg.test_probe", calc_rdm=calc)
    fast.patch()
    assert ours.calc_rdm is calc

    def mine(*args, **kwargs):
        return None

    before.compare = mine
    later = user_module(monkeypatch, "user_later", calc_rdm=fast.calc_rdm)
    fast.unpatch()
    assert before.calc_rdm is calc and before.compare is mine
    assert later.calc_rdm is fast.calc_rdm
    assert ours.calc_rdm is calc


class ReadOnly(types.ModuleType):
    """A module whose attributes cannot be set (as some lazy-loading module types do)."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self.__name__} is read-only")


def test_a_reference_that_cannot_be_rebound_warns_once_naming_it(monkeypatch, unpatched):
    frozen = ReadOnly("frozen_analysis")
    vars(frozen)["calc_rdm"] = original("calc_rdm")
    monkeypatch.setitem(sys.modules, "frozen_analysis", frozen)
    with pytest.warns(L2BGWarning, match=r"cannot rebind frozen_analysis\.calc_rdm") as seen:
        fast.patch()
    assert len([w for w in seen if issubclass(w.category, L2BGWarning)]) == 1
    assert "\n" not in str(seen[0].message)
    assert frozen.calc_rdm is original("calc_rdm")
    fast.unpatch()
    with warnings.catch_warnings():
        warnings.simplefilter("error", L2BGWarning)  # named once: no second warning
        with fast.patch():
            pass
    assert frozen.calc_rdm is original("calc_rdm")


def test_entries_of_sys_modules_without_a_namespace_are_skipped(monkeypatch, unpatched):
    """Anything in sys.modules (None, objects without __dict__) is skipped, not an error."""
    monkeypatch.setitem(sys.modules, "not_a_module", 42)
    monkeypatch.setitem(sys.modules, "blocked_module", None)
    with fast.patch():
        assert fast.is_patched()
    assert not fast.is_patched()
