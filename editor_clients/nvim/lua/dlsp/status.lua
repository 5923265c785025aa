--- Model status for `:DlspStatus`: the last `dlsp/status` notification of each client (state,
--- model, device, message) plus a `dlsp/stats` request (latency percentiles and counters).

local M = {}
local api = vim.api

---@type table<integer, {state: string, model?: string, device?: string, message?: string}>
M.last = {}

--- Handler for the `dlsp/status` notification; also fires `User DlspStatus` with the params.
function M.on_status(_, params, ctx)
  if type(params) ~= "table" then
    return
  end
  M.last[ctx.client_id] = params
  api.nvim_exec_autocmds("User", { pattern = "DlspStatus", data = params, modeline = false })
  if params.state == "failed" then
    vim.notify("[dlsp] " .. tostring(params.message), vim.log.levels.ERROR)
  end
end

local function clients()
  return vim.lsp.get_clients({ name = "dlsp" })
end

local function fmt_ms(v)
  return type(v) == "number" and string.format("%.1f ms", v) or "n/a"
end

local function str(v)
  return (v == nil or v == vim.NIL) and "-" or tostring(v)
end

--- Lines describing every running dlsp client (asks each for `dlsp/stats`, up to `timeout_ms`).
---@return string[]
function M.lines(timeout_ms)
  local out = {}
  for _, client in ipairs(clients()) do
    local st = M.last[client.id] or {}
    local resp = client:request_sync("dlsp/stats", vim.empty_dict(), timeout_ms or 2000)
    local stats = resp and resp.result or {}
    local info = type(stats.model) == "table" and stats.model or {}
    out[#out + 1] = string.format("[dlsp] client %d: state=%s model=%s device=%s", client.id,
      str(stats.state or st.state), str(st.model or info.model), str(st.device or info.device))
    if st.message and st.message ~= "" then
      out[#out + 1] = "[dlsp]   " .. st.message
    end
    if resp == nil or resp.err then
      out[#out + 1] = "[dlsp]   stats unavailable: " .. str(resp and resp.err and resp.err.message or "timeout")
    else
      out[#out + 1] = "[dlsp]   last latency: " .. fmt_ms(stats.last_latency_ms)
      local total = type(stats.stages) == "table" and stats.stages.total
      if total then
        out[#out + 1] = string.format("[dlsp]   total: p50 %s, p95 %s over %d requests",
          fmt_ms(total.p50_ms), fmt_ms(total.p95_ms), total.count)
      end
      local counts = {}
      for k, v in pairs(type(stats.requests) == "table" and stats.requests or {}) do
        counts[#counts + 1] = k .. "=" .. tostring(v)
      end
      table.sort(counts)
      if #counts > 0 then
        out[#out + 1] = "[dlsp]   requests: " .. table.concat(counts, " ")
      end
    end
  end
  if #out == 0 then
    out[1] = "[dlsp] not running (no dlsp client; check :checkhealth vim.lsp and the filetype)"
  end
  return out
end

function M.show()
  local chunks = {}
  for i, line in ipairs(M.lines()) do
    chunks[#chunks + 1] = { (i > 1 and "\n" or "") .. line }
  end
  api.nvim_echo(chunks, true, {})
end

return M
