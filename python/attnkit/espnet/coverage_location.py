"""AttCovLoc (atype ``coverage_location``): coverage through the location convolution (spec 2.8)."""
from __future__ import annotations

from attnkit.espnet._base import AttentionOutput, CoverageState, Prepared, peak_of
from attnkit.espnet.coverage import coverage_total, coverage_total_on_device
from attnkit.espnet.location import LocationAware


class AttCovLoc(LocationAware):
    """As AttLoc with a = the coverage sum (all previous weights plus the initial U).

    Parameters: as AttLoc. State: ``CoverageState(total)``. Runs on ``fused_additive_step``.
    """

    espnet_name = "AttCovLoc"
    state_kind = "coverage_list"

    def _initial(self, prepared, rows):
        return CoverageState(self._uniform(prepared, rows))

    def step(self, prepared: Prepared, dec_z=None, state=None, *, scaling: float = 2.0, rows=None) -> AttentionOutput:
        """dec_z ``[N, Dz]`` or None (zeros); state: ``CoverageState`` or None (total = U);
        rows ``[N]``. Returns context ``[N, E]``, weights ``[N, T]``,
        state = CoverageState(total + weights), peak ``[N]``."""
        op = "AttCovLoc.step"
        if getattr(prepared, "on_device", False):
            g = self._begin_device(op, prepared, dec_z, rows)
            s = self._scaling(op, scaling)
            total = coverage_total_on_device(op, self, state, g)
            ctx, w, peak = g.additive(total, g.weight("loc_conv.weight")[:, 0], g.weight("mlp_att.weight"), None, s)
            return AttentionOutput(ctx, w, CoverageState(g.added(total, w)), peak)
        prepared, rows, dec_z = self._begin(op, prepared, dec_z, rows)
        s = self._scaling(op, scaling)
        total = coverage_total(op, self, state, prepared, rows)
        ctx, w = self._location_step(prepared, rows, dec_z, total, s)
        return AttentionOutput(ctx, w, CoverageState(total + w), peak_of(w))
