-- Argo CD health of a dvo.caat.io ApprovalRequest: Suspended while it waits for approvers,
-- Healthy once approved (or replaced by a newer request), Degraded when rejected, expired or
-- cancelled.
local hs = {status = "Suspended", message = "waiting for approvals"}
local st = obj.status
if st == nil or st.phase == nil then
  return hs
end
local approved = nil
if st.conditions ~= nil then
  for _, c in ipairs(st.conditions) do
    if c.type == "Approved" then
      approved = c.message
    end
  end
end
if approved ~= nil then
  hs.message = approved
end
if st.phase == "Pending" then
  hs.status = "Suspended"
elseif st.phase == "Approved" or st.phase == "Superseded" then
  hs.status = "Healthy"
else
  hs.status = "Degraded"
end
return hs
