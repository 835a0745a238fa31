-- Argo CD health of a dvo.caat.io DeploymentPolicy: Healthy when the operator accepted it,
-- Degraded when it cannot be evaluated, Progressing until the operator has looked at it.
local hs = {status = "Progressing", message = "waiting for the dvo operator"}
local st = obj.status
if st == nil or st.conditions == nil then
  return hs
end
if st.observedGeneration ~= nil and obj.metadata.generation ~= nil and st.observedGeneration < obj.metadata.generation then
  return hs
end
for _, c in ipairs(st.conditions) do
  if c.type == "Accepted" then
    hs.message = c.message or c.reason or ""
    if c.status == "True" then
      hs.status = "Healthy"
    else
      hs.status = "Degraded"
    end
  end
end
return hs
