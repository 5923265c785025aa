--- dlsp for Neovim: starts `python -m lsp_server` through `vim.lsp.config`/`vim.lsp.enable`
--- (0.11+), shows inline completions natively (`vim.lsp.inline_completion`, 0.12+) or as extmark
--- ghost text, and maps accept / accept word / accept line / dismiss / trigger in insert mode.
--- Code actions need nothing here: they come through `vim.lsp.buf.code_action()`.

local M = {}

M.defaults = {
  -- How to start the server; add "--model", DIR or "--device", "cpu" here if needed.
  cmd = { "python3", "-m", "lsp_server" },
  cmd_env = nil,
  filetypes = { "python", "javascript", "javascriptreact", "typescript", "typescriptreact",
    "go", "rust", "c", "cpp", "java", "lua", "sh" },
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" },
  -- Server settings (camelCase): modelPath, device, threshold, steps, minPerStep, draft, closeBrackets,
  -- baseWeight, baseMultiline, rerank, minConfidence, maxTokens, debounceMs, enabledLanguages, contextTokens, logLevel. Sent as initializationOptions and as settings.dlsp.
  settings = {},
  -- "native" (vim.lsp.inline_completion, 0.12+), "extmark" (own ghost text) or "auto".
  inline = "auto",
  auto_trigger = true, -- ask on every edit in insert mode; false: only on keymaps.trigger
  debounce_ms = 75, -- extmark path; Neovim's native path has its own (200 ms)
  -- Insert-mode keys; set one to false to leave it unmapped. Unused keys fall through.
  keymaps = {
    accept = "<M-l>",
    accept_word = "<M-w>",
    accept_line = "<M-j>",
    dismiss = "<M-e>",
    trigger = "<M-\\>",
  },
}

M.options = vim.deepcopy(M.defaults)

local function notify(msg, level)
  vim.notify("[dlsp] " .. msg, level or vim.log.levels.INFO)
end

--- The path a buffer uses: "native" or "extmark".
local function resolve_inline(opts)
  local native = require("dlsp.native").available()
  if opts.inline == "extmark" then
    return "extmark"
  end
  if opts.inline == "native" and not native then
    notify("native inline completion needs Neovim 0.12; using extmark ghost text", vim.log.levels.WARN)
  end
  if native and opts.auto_trigger == false then
    return "extmark" -- Neovim's native path always asks automatically
  end
  return native and "native" or "extmark"
end

local function path_of(bufnr)
  return vim.b[bufnr].dlsp_inline
end

local function buf(bufnr)
  return (bufnr == nil or bufnr == 0) and vim.api.nvim_get_current_buf() or bufnr
end

local function impl(bufnr)
  local p = path_of(bufnr)
  return p and require(p == "native" and "dlsp.native" or "dlsp.ghost")
end

--- Call `method` of the buffer's inline implementation; false when dlsp is not attached.
local function call(bufnr, method, ...)
  local b = buf(bufnr)
  local m = impl(b)
  return m ~= nil and m[method](b, ...)
end

--- Accept all of the shown suggestion; false when there is none.
function M.accept(bufnr)
  return call(bufnr, "accept", "all")
end

--- Accept the next word of the shown suggestion.
function M.accept_word(bufnr)
  return call(bufnr, "accept", "word")
end

--- Accept the rest of the current line of the shown suggestion.
function M.accept_line(bufnr)
  return call(bufnr, "accept", "line")
end

function M.dismiss(bufnr)
  return call(bufnr, "dismiss")
end

--- Ask for a suggestion at the cursor now.
function M.trigger(bufnr)
  local b = buf(bufnr)
  local m = impl(b)
  if m then
    m.request(b)
  end
  return m ~= nil
end

--- The suggestion shown in a buffer, if any.
---@return string|nil
function M.suggestion(bufnr)
  local b = buf(bufnr)
  local m = impl(b)
  return m and m.current(b)
end

local ACTIONS = { accept = M.accept, accept_word = M.accept_word, accept_line = M.accept_line,
  dismiss = M.dismiss, trigger = M.trigger }

local function map_keys(bufnr, keymaps)
  for name, lhs in pairs(keymaps or {}) do
    local fn = ACTIONS[name]
    if fn and lhs then
      vim.keymap.set("i", lhs, function()
        if not fn(bufnr) and name ~= "trigger" then
          vim.api.nvim_feedkeys(vim.keycode(lhs), "n", false) -- nothing to do: the key's usual meaning
        end
      end, { buffer = bufnr, desc = "dlsp: " .. name:gsub("_", " ") })
    end
  end
end

--- `on_attach` of the dlsp client: pick the inline path and map the keys for this buffer.
function M.attach(client, bufnr)
  local opts = M.options
  local path = resolve_inline(opts)
  vim.b[bufnr].dlsp_inline = path
  if path == "native" then
    require("dlsp.native").attach(bufnr)
  else
    require("dlsp.ghost").attach(bufnr, client.id, opts)
  end
  map_keys(bufnr, opts.keymaps)
end

--- `on_detach`-like cleanup (LspDetach of the dlsp client).
function M.detach(bufnr)
  local path = path_of(bufnr)
  if path == "native" then
    require("dlsp.native").detach(bufnr)
  elseif path == "extmark" then
    require("dlsp.ghost").detach(bufnr)
  end
  if vim.api.nvim_buf_is_valid(bufnr) then
    vim.b[bufnr].dlsp_inline = nil
  end
end

local function nonempty(t)
  return (t and next(t)) and t or vim.empty_dict()
end

--- The `vim.lsp.Config` for the current options (also what `lsp/dlsp.lua` returns).
function M.lsp_config()
  local o = M.options
  local settings = vim.deepcopy(o.settings or {})
  return {
    cmd = o.cmd,
    cmd_env = o.cmd_env,
    filetypes = o.filetypes,
    root_markers = o.root_markers,
    init_options = nonempty(settings),
    settings = { dlsp = nonempty(settings) },
    handlers = { ["dlsp/status"] = require("dlsp.status").on_status },
    on_attach = function(client, bufnr)
      M.attach(client, bufnr)
    end,
  }
end

local function create_autocmds()
  local group = vim.api.nvim_create_augroup("dlsp", { clear = true })
  vim.api.nvim_create_autocmd("LspDetach", {
    group = group,
    callback = function(args)
      local client = vim.lsp.get_client_by_id(args.data.client_id)
      if client and client.name == "dlsp" then
        M.detach(args.buf)
      end
    end,
  })
  vim.api.nvim_set_hl(0, "DlspGhost", { link = "Comment", default = true })
end

--- Merge `opts` into the defaults, register the "dlsp" config and enable it.
---@param opts? table
function M.setup(opts)
  if vim.fn.has("nvim-0.11") == 0 then
    notify("needs Neovim 0.11 or newer (vim.lsp.config)", vim.log.levels.ERROR)
    return
  end
  opts = opts or {}
  vim.validate("opts", opts, "table")
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts)
  if not vim.tbl_contains({ "auto", "native", "extmark" }, M.options.inline) then
    notify("inline must be auto, native or extmark; using auto", vim.log.levels.WARN)
    M.options.inline = "auto"
  end
  create_autocmds()
  require("dlsp.commands").create()
  vim.lsp.config("dlsp", M.lsp_config())
  vim.lsp.enable("dlsp")
end

create_autocmds()

return M
