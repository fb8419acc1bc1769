-- Argo CD health of vehicle-connect's WebhookSubscription, FtpConnection and ApiConnection
-- (connect.vehicles.io). Written for argocd-cm without useOpenLibs: only base and table
-- functions, so no string library. docs/health/README.md explains the verdicts.
local hs = { status = "Progressing", message = "Waiting for the operator to report status" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if observed == nil or (generation ~= nil and observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = {}
for _, c in ipairs(obj.status.conditions) do
  if c.type ~= nil then
    conditions[c.type] = c
  end
end

local function describe(c)
  local text = c.reason or ""
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local function isTrue(c)
  return c ~= nil and c.status == "True"
end

-- The operator is still working or retrying by itself: wait, as kstatus and Flux do.
if isTrue(conditions.Reconciling) then
  hs.message = describe(conditions.Reconciling)
  return hs
end

-- Only the user can fix it.
if isTrue(conditions.Stalled) then
  hs.status = "Degraded"
  hs.message = describe(conditions.Stalled)
  return hs
end

local ready = conditions.Ready
if ready == nil then
  hs.message = "No Ready condition yet"
  return hs
end

-- Suspended is what the user asked for (the operator writes it as Ready=True).
if ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = ready.message or "spec.suspend is true"
  return hs
end

if ready.status == "True" then
  -- Configured, but events are not getting through.
  local delivering = conditions.Delivering
  if delivering ~= nil and delivering.status == "False" then
    hs.status = "Degraded"
    hs.message = delivering.message or delivering.reason
    return hs
  end
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

-- Not ready with neither Reconciling nor Stalled: the operator promises not to leave this,
-- so waiting would hide a fault.
if ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

hs.message = describe(ready)
return hs
