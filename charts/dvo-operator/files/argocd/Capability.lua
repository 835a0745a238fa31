-- Argo CD health of a dvo.caat.io Capability: a switch with no status of its own, healthy as
-- soon as it exists; a disabled one says so.
local hs = {status = "Healthy", message = "enabled"}
if obj.spec ~= nil and obj.spec.enabled == false then
  hs.message = "disabled (fallback " .. (obj.spec.fallback or "Error") .. ")"
end
return hs
