--- Ghost text drawn with extmarks: the inline path for Neovim 0.11 (no `vim.lsp.inline_completion`)
--- or when `inline = "extmark"` is asked for. It requests `textDocument/inlineCompletion` itself,
--- debounced, drops replies that no longer fit the buffer, and keeps the rest of a suggestion
--- visible while the user types through it or accepts it a word or a line at a time.

local text = require("dlsp.text")

local M = {}
local api = vim.api
local METHOD = "textDocument/inlineCompletion"
local INVOKED, AUTOMATIC = 1, 2

M.ns = api.nvim_create_namespace("dlsp.ghost")

---@class dlsp.Ghost
---@field row integer 0-based
---@field col integer 0-based byte column
---@field text string what is still to come
---@field tick integer b:changedtick the ghost was drawn for

---@class dlsp.GhostState
---@field client_id integer
---@field auto boolean
---@field debounce_ms integer
---@field seq integer number of the latest request; replies to older ones are dropped
---@field req? integer id of the pending request
---@field timer? uv.uv_timer_t
---@field ghost? dlsp.Ghost
---@field group integer

---@type table<integer, dlsp.GhostState>
local states = {}

local function resolve(bufnr)
  return (bufnr == nil or bufnr == 0) and api.nvim_get_current_buf() or bufnr
end

local function cursor(bufnr)
  local win = api.nvim_get_current_win()
  if api.nvim_win_get_buf(win) ~= bufnr then
    return nil
  end
  local pos = api.nvim_win_get_cursor(win)
  return pos[1] - 1, pos[2], win
end

local function in_insert()
  return api.nvim_get_mode().mode:sub(1, 1) == "i"
end

local function stop_timer(s)
  if s.timer then
    s.timer:stop()
    if not s.timer:is_closing() then
      s.timer:close()
    end
    s.timer = nil
  end
end

local function cancel(s)
  stop_timer(s)
  s.seq = s.seq + 1
  if s.req then
    local client = vim.lsp.get_client_by_id(s.client_id)
    if client then
      client:cancel_request(s.req)
    end
    s.req = nil
  end
end

local function render(bufnr, g)
  local lines = vim.split(g.text, "\n", { plain = true })
  local virt_lines = {}
  for i = 2, #lines do
    virt_lines[#virt_lines + 1] = { { lines[i], "DlspGhost" } }
  end
  api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
  api.nvim_buf_set_extmark(bufnr, M.ns, g.row, g.col, {
    virt_text = { { lines[1], "DlspGhost" } },
    virt_text_pos = vim.fn.has("nvim-0.10") == 1 and "inline" or "overlay",
    virt_lines = #virt_lines > 0 and virt_lines or nil,
    hl_mode = "combine",
  })
end

local function set_ghost(bufnr, s, g)
  if g == nil or g.text == "" then
    s.ghost = nil
    api.nvim_buf_clear_namespace(bufnr, M.ns, 0, -1)
    return
  end
  s.ghost = g
  render(bufnr, g)
end

--- The text drawn by the extmarks of namespace `ns` in a buffer (virt_text, then virt_lines
--- joined by line breaks), or nil when there are none.
---@return string|nil
function M.read(bufnr, ns)
  local marks = api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, { details = true })
  if #marks == 0 then
    return nil
  end
  local d = marks[1][4]
  local function join(chunks)
    local out = {}
    for _, chunk in ipairs(chunks or {}) do
      out[#out + 1] = chunk[1]
    end
    return table.concat(out)
  end
  local lines = { join(d.virt_text) }
  for _, vl in ipairs(d.virt_lines or {}) do
    lines[#lines + 1] = join(vl)
  end
  return table.concat(lines, "\n")
end

--- The visible suggestion of a buffer, if any (what is left to accept).
---@return string|nil
function M.current(bufnr)
  local s = states[resolve(bufnr)]
  return s and s.ghost and s.ghost.text or nil
end

--- The part of an item still to insert at (row, col), or nil when the item does not fit there.
local function remaining(bufnr, client, item, row, col)
  local s = text.plain(item.insertText)
  if not item.range then
    return s
  end
  local start = item.range.start
  if start.line ~= row then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local ok, start_col = pcall(vim.str_byteindex, line, client.offset_encoding, start.character, false)
  if not ok or start_col > col then
    return nil
  end
  local typed = line:sub(start_col + 1, col)
  if s:sub(1, #typed) ~= typed then
    return nil
  end
  return s:sub(#typed + 1)
end

--- Ask the server for a suggestion at the cursor now.
---@param kind? integer InlineCompletionTriggerKind (1 invoked, 2 automatic)
function M.request(bufnr, kind)
  bufnr = resolve(bufnr)
  local s = states[bufnr]
  local client = s and vim.lsp.get_client_by_id(s.client_id)
  local row, col, win = cursor(bufnr)
  if not client or not row then
    return
  end
  cancel(s)
  local seq, tick = s.seq, api.nvim_buf_get_changedtick(bufnr)
  local params = vim.lsp.util.make_position_params(win, client.offset_encoding)
  params.context = { triggerKind = kind or INVOKED }
  local ok, id = client:request(METHOD, params, function(err, result)
    if seq ~= s.seq or not api.nvim_buf_is_valid(bufnr) then
      return -- a newer request (or a cancel) superseded this one
    end
    s.req = nil
    local r2, c2 = cursor(bufnr)
    if err or not result or r2 ~= row or c2 ~= col or api.nvim_buf_get_changedtick(bufnr) ~= tick or not in_insert() then
      return -- stale: the buffer or the cursor moved on while the model worked
    end
    local item = (result.items or result)[1]
    local rest = item and remaining(bufnr, client, item, row, col)
    set_ghost(bufnr, s, rest and { row = row, col = col, text = rest, tick = tick } or nil)
  end, bufnr)
  s.req = ok and id or nil
end

local function schedule_request(bufnr, s)
  stop_timer(s)
  s.timer = vim.defer_fn(function()
    s.timer = nil
    if api.nvim_buf_is_valid(bufnr) and in_insert() then
      M.request(bufnr, AUTOMATIC)
    end
  end, s.debounce_ms)
end

--- After a keystroke or a move: keep the ghost if the user typed through it, else ask again.
local function on_change(bufnr)
  local s = states[bufnr]
  local row, col = cursor(bufnr)
  if not s or not row then
    return
  end
  local tick, g = api.nvim_buf_get_changedtick(bufnr), s.ghost
  if g and g.tick == tick and g.row == row and g.col == col then
    return -- our own edit, or a second event for the same change
  end
  if g and row == g.row and col > g.col then
    local line = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
    local typed = line:sub(g.col + 1, col)
    if not typed:find("\n", 1, true) and g.text:sub(1, #typed) == typed then
      cancel(s)
      set_ghost(bufnr, s, { row = row, col = col, text = g.text:sub(#typed + 1), tick = tick })
      return
    end
  end
  cancel(s)
  set_ghost(bufnr, s, nil)
  if s.auto then
    schedule_request(bufnr, s)
  end
end

--- Show `suggestion` at the cursor of a buffer that has the extmark path (for other sources of
--- suggestions, and for tests). Returns false when the buffer is not attached or not current.
---@param suggestion string
---@return boolean
function M.show(bufnr, suggestion)
  bufnr = resolve(bufnr)
  local s = states[bufnr]
  local row, col = cursor(bufnr)
  if not s or not row then
    return false
  end
  cancel(s)
  set_ghost(bufnr, s, { row = row, col = col, text = suggestion, tick = api.nvim_buf_get_changedtick(bufnr) })
  return true
end

--- Accept the whole suggestion, its next word or its next line. Returns false if none is shown.
---@param kind "all"|"word"|"line"
---@return boolean
function M.accept(bufnr, kind)
  bufnr = resolve(bufnr)
  local s = states[bufnr]
  local g = s and s.ghost
  local row, col, win = cursor(bufnr)
  if not g or row ~= g.row or col ~= g.col then
    return false
  end
  local part = text.piece(g.text, kind)
  cancel(s)
  local r, c = text.insert(bufnr, win, row, col, part)
  set_ghost(bufnr, s, { row = r, col = c, text = g.text:sub(#part + 1), tick = api.nvim_buf_get_changedtick(bufnr) })
  return true
end

--- Hide the suggestion and cancel a pending request. Returns false if nothing was shown.
function M.dismiss(bufnr)
  bufnr = resolve(bufnr)
  local s = states[bufnr]
  if not s then
    return false
  end
  local shown = s.ghost ~= nil
  cancel(s)
  set_ghost(bufnr, s, nil)
  return shown
end

---@param opts {auto_trigger: boolean, debounce_ms: integer}
function M.attach(bufnr, client_id, opts)
  if states[bufnr] then
    states[bufnr].client_id = client_id
    return
  end
  local group = api.nvim_create_augroup("dlsp.ghost." .. bufnr, { clear = true })
  local s = { client_id = client_id, auto = opts.auto_trigger, debounce_ms = opts.debounce_ms, seq = 0, group = group }
  states[bufnr] = s
  api.nvim_create_autocmd({ "TextChangedI", "CursorMovedI" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      on_change(bufnr)
    end,
  })
  api.nvim_create_autocmd("InsertEnter", {
    group = group,
    buffer = bufnr,
    callback = function()
      if s.auto then
        schedule_request(bufnr, s)
      end
    end,
  })
  api.nvim_create_autocmd({ "InsertLeave", "BufLeave" }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
end

function M.detach(bufnr)
  local s = states[bufnr]
  if not s then
    return
  end
  M.dismiss(bufnr)
  pcall(api.nvim_del_augroup_by_id, s.group)
  states[bufnr] = nil
end

return M
