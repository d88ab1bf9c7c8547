-- Argo CD health check for networking.p4kube.io/LoadBalancerConfig.
-- Reads the kstatus conditions the p4kube reconciler writes (Ready, Reconciling, Stalled):
--   Healthy      Ready=True, for the current generation
--   Progressing  no status yet, an older generation observed, Reconciling=True, or Ready unknown
--   Degraded     Stalled=True (the message says why), or Ready=False
-- Installed through argocd-cm (see argocd-cm-patch.yaml, which must carry this file verbatim).
local hs = {status = "Progressing", message = "Waiting for the p4kube reconciler to report status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the p4kube reconciler to observe generation " .. generation
  return hs
end

local conditions = {}
for _, condition in ipairs(obj.status.conditions) do
  if condition.type ~= nil then
    conditions[condition.type] = condition
  end
end

-- A condition written for an older generation says nothing about the current spec.
local function current(condition)
  return generation == nil or condition.observedGeneration == nil or condition.observedGeneration >= generation
end

local function describe(condition)
  local reason = condition.reason or condition.type
  if condition.message ~= nil and condition.message ~= "" then
    return reason .. ": " .. condition.message
  end
  return reason
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" and current(stalled) then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

local reconciling = conditions["Reconciling"]
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
  return hs
end

local ready = conditions["Ready"]
if ready ~= nil and current(ready) then
  if ready.status == "True" then
    hs.status = "Healthy"
    hs.message = describe(ready)
    return hs
  end
  if ready.status == "False" then
    hs.status = "Degraded"
    hs.message = describe(ready)
    return hs
  end
end

hs.message = "Waiting for the Ready condition of generation " .. (generation or "?")
return hs
