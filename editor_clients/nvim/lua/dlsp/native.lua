--- The inline path on Neovim 0.12+: `vim.lsp.inline_completion` requests, draws and accepts;
--- this module adds accepting a word or a line through `get({ on_accept = ... })`, and dismissing
--- (an `on_accept` that inserts nothing: `get()` has already hidden the item).

local text = require("dlsp.text")

local M = {}
local api = vim.api

function M.available()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.get ~= nil
end

function M.attach(bufnr)
  vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
end

function M.detach(bufnr)
  if api.nvim_buf_is_valid(bufnr) then
    vim.lsp.inline_completion.enable(false, { bufnr = bufnr })
  end
end

--- Insert the next word or line of an item: the part already typed since the item's range start
--- is skipped, the piece is inserted at the cursor, and Neovim asks again on the cursor move (the
--- server answers from its type-through cache, so the rest comes back without a model run).
---@param item vim.lsp.inline_completion.Item
---@param kind "word"|"line"
local function insert_piece(bufnr, item, kind)
  local win = vim.fn.bufwinid(bufnr)
  if win == -1 then
    return
  end
  local pos = api.nvim_win_get_cursor(win)
  local row, col = pos[1] - 1, pos[2]
  local s = text.plain(item.insert_text)
  local range = item.range
  if range and range.start.row == row and range.start.col <= col then
    local typed = api.nvim_buf_get_text(bufnr, row, range.start.col, row, col, {})[1]
    if s:sub(1, #typed) == typed then
      s = s:sub(#typed + 1)
    end
  end
  text.insert(bufnr, win, row, col, text.piece(s, kind))
end

---@param kind "all"|"word"|"line"
---@return boolean
function M.accept(bufnr, kind)
  if kind == "all" then
    return vim.lsp.inline_completion.get({ bufnr = bufnr })
  end
  return vim.lsp.inline_completion.get({
    bufnr = bufnr,
    on_accept = function(item)
      insert_piece(bufnr, item, kind)
    end,
  })
end

function M.dismiss(bufnr)
  return vim.lsp.inline_completion.get({ bufnr = bufnr, on_accept = function() end })
end

--- Ask now: Neovim requests on InsertEnter and on cursor moves; re-entering the current position
--- is the public way to make it ask again.
function M.request(bufnr)
  local win = vim.fn.bufwinid(bufnr)
  if win ~= -1 then
    api.nvim_exec_autocmds("CursorMovedI", { buffer = bufnr, modeline = false })
  end
end

--- The suggestion Neovim shows in a buffer (read from its extmarks), if any.
---@return string|nil
function M.current(bufnr)
  local ns = api.nvim_get_namespaces()["nvim.lsp.inline_completion"]
  if not ns then
    return nil
  end
  return require("dlsp.ghost").read(bufnr, ns)
end

return M
