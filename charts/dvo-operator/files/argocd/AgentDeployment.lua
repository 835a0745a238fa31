-- Argo CD health of a dvo.caat.io AgentDeployment: Healthy once its spec runs, Progressing while
-- it rolls out, Suspended while it waits for people (approval, a manual step) or for a window,
-- Degraded when it is blocked, rejected, expired or failed.
local hs = {status = "Progressing", message = "waiting for the dvo operator"}
local st = obj.status
if st == nil or st.phase == nil then
  return hs
end
if st.observedGeneration ~= nil and obj.metadata.generation ~= nil and st.observedGeneration < obj.metadata.generation then
  hs.message = "the dvo operator has not evaluated the latest spec yet"
  return hs
end
local message = st.message or st.phase
local phase = st.phase
if phase == "Deployed" then
  hs.status = "Healthy"
elseif phase == "Pending" or phase == "Progressing" then
  hs.status = "Progressing"
elseif phase == "PendingApproval" or phase == "ManualActionRequired" then
  hs.status = "Suspended"
elseif phase == "Blocked" then
  if st.decision ~= nil and st.decision.nextWindowOpensAt ~= nil then
    hs.status = "Suspended"
    message = message .. " (window opens at " .. st.decision.nextWindowOpensAt .. ")"
  else
    hs.status = "Degraded"
  end
else
  -- Degraded (running with steps left out), Rejected, ApprovalExpired, Failed
  hs.status = "Degraded"
end
hs.message = message
return hs
