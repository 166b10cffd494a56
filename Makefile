# moonlm: one C source, two Lua ABIs (5.4 and 5.1/LuaJIT), kernels per ISA with their own flags.
#   make            both modules under build/
#   make demo       install what is missing, build, generate text
#   make test       install what is missing, build both ABIs, run every spec (SAN=1: sanitizers)
#   make bench      benchmarks (ours next to the machine's limits and, when given, llama.cpp)
#   make install    PREFIX=/usr/local LUA_VERSION=5.4|5.1
#   make fuzz       libFuzzer harnesses (clang); make fuzz-template / fuzz-gguf / fuzz-loader /
#                   fuzz-schema / fuzz-grammar run one (FUZZ_SECONDS)
#   make selftest   the C self-tests of tools/ (run by spec/selftest_spec.lua)

CC      ?= gcc
# one job per processor unless told (make -jN, or JOBS=N): the kernel files alone take
# minutes of CPU, and `make`, `make test` and `luarocks make` should not take them in turn
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
ifeq ($(filter -j%,$(MAKEFLAGS)),)
  MAKEFLAGS += -j$(JOBS)
endif
PREFIX  ?= /usr/local
LUA_VERSION ?= 5.4
SHARED  ?= $(abspath ../shared)
MODEL   ?= $(SHARED)/models/stories260K.gguf

LUA54_INC  ?= /usr/include/lua5.4
LUAJIT_INC ?= /usr/include/luajit-2.1

WARN  = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Wpointer-arith \
        -Wvla -Wformat=2 -Wundef -Wno-unused-parameter
OPT   = -O2 -g
ifeq ($(SAN),1)
  BUILD = build-san
  OPT   = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
  SANLD = -fsanitize=address,undefined
else
  BUILD = build
endif
CFLAGS  ?=
CFLAGS  += -std=c11 $(OPT) -fPIC -fvisibility=hidden -fopenmp -D_GNU_SOURCE $(WARN)
LDFLAGS += -shared -fopenmp -Wl,-z,nodelete $(SANLD)
LIBS     = -lopenblas -lm -lpthread

# Core: no Lua, compiled once. Kernel levels get their own ISA flags.
CORE = error threads dtype quant tensor ops matmul sample gguf tokenizer tokenize tokenizer_spm tokenizer_bpe tokenizer_wpm \
       tokenizer_decode unicode \
       model arch arch_llama arch_qwen2 arch_qwen3 arch_phi3 arch_mpt arch_gemma2 arch_gemma3 arch_bert \
       kvcache context forward attention flash registry \
       json grammar_schema grammar_schema_leaf \
       grammar_gbnf grammar_regex grammar_compile grammar_dfa grammar_vocab grammar_match grammar_mask \
       kernels/dispatch kernels/ref kernels/rowcheck
# models written in Lua: the torch7 essentials, RoPE and ALiBi
CORE += ops_ext rope
KERNELS_C      = kernels/pack
KERNELS_AVX2   = kernels/avx2 kernels/flash_avx2
KERNELS_AVX512 = kernels/avx512 kernels/avx512vnni kernels/flash_avx512
KERNELS_AMX    = kernels/amx
# kernels keep arrays of accumulators in registers: let GCC scalarize them. Their debug
# information is line tables only (-g1): full -g doubled avx512.c's compile time (131 s
# against 67 s of CPU) for byte-identical machine code; backtraces and profiles still map
# to source lines.
KOPT       = --param sra-max-scalarization-size-Ospeed=4096 -g1
ISA_avx2   = -mavx2 -mfma -mf16c $(KOPT)
ISA_avx512 = -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c -mavx2 $(KOPT)
ISA_avx512vnni = $(ISA_avx512) -mavx512vnni -mavx512bf16
ISA_amx    = $(ISA_avx512vnni) -mamx-tile -mamx-int8 -mamx-bf16
KERNEL_SRCS = $(wildcard $(addprefix src/,$(addsuffix .c,$(KERNELS_C) $(KERNELS_AVX2) $(KERNELS_AVX512) $(KERNELS_AMX))))
# amx.c once more against the tile emulator (portable C): the test-only table amx-emu
AMX_EMU_OBJ = $(if $(wildcard src/kernels/amx.c),$(BUILD)/obj/kernels/amx_emu.o)
CORE_OBJS = $(addprefix $(BUILD)/obj/,$(addsuffix .o,$(CORE))) \
            $(patsubst src/%.c,$(BUILD)/obj/%.o,$(KERNEL_SRCS)) $(AMX_EMU_OBJ)

# Binding: compiled per ABI.
BIND = lua_core lua_util lua_tensor lua_tensor_ext lua_weight lua_kvcache lua_gguf lua_model lua_sample lua_grammar_schema lua_grammar
# tensor.attention (the forward pass's attention kernel, flash.c)
BIND += lua_attention
BIND54 = $(addprefix $(BUILD)/obj-5.4/,$(addsuffix .o,$(BIND)))
BIND51 = $(addprefix $(BUILD)/obj-5.1/,$(addsuffix .o,$(BIND)))
HDRS = $(wildcard src/*.h src/kernels/*.h)

MOD54 = $(BUILD)/5.4/moonlm/core.so
MOD51 = $(BUILD)/5.1/moonlm/core.so

.PHONY: all deps deps-build test demo bench install clean fuzz selftest rock rock-install
all: $(MOD54) $(MOD51)

$(BUILD)/obj/kernels/avx2.o: CFLAGS += $(ISA_avx2)
$(BUILD)/obj/kernels/flash_avx2.o: CFLAGS += $(ISA_avx2)
$(BUILD)/obj/kernels/avx512.o: CFLAGS += $(ISA_avx512)
$(BUILD)/obj/kernels/flash_avx512.o: CFLAGS += $(ISA_avx512)
$(BUILD)/obj/kernels/avx512vnni.o: CFLAGS += $(ISA_avx512vnni)
$(BUILD)/obj/kernels/amx.o: CFLAGS += $(ISA_amx)
# each object depends on the headers it includes (-MMD writes them into a .d beside it)
DEPFLAGS = -MMD -MP
$(BUILD)/obj/kernels/amx_emu.o: src/kernels/amx.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -DML_AMX_EMULATE -c $< -o $@

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -c $< -o $@

$(BUILD)/obj-5.4/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -I$(LUA54_INC) -c $< -o $@

$(BUILD)/obj-5.1/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -I$(LUAJIT_INC) -c $< -o $@

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# A Lua C module leaves the Lua API undefined: the interpreter that loads it provides it (and
# must: linking a Lua library into the module would give a program two Lua runtimes). So the
# module links without --no-undefined, and a second link of the same objects with it, against
# the Lua library of the ABI, into a file removed at once, fails on any other undefined
# symbol: one of ours.
LUA54_LIB  ?= -llua5.4
LUAJIT_LIB ?= -lluajit-5.1
define link_module
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(1) -o $@ $(LIBS)
	@$(CC) $(LDFLAGS) -s -Wl,--no-undefined $(1) -o $@.check $(LIBS) $(2) && rm -f $@.check || \
	  { rm -f $@ $@.check; echo "moonlm: $@ has undefined symbols besides Lua's (above)"; exit 1; }
endef

$(MOD54): $(CORE_OBJS) $(BIND54)
	$(call link_module,$^,$(LUA54_LIB))

$(MOD51): $(CORE_OBJS) $(BIND51)
	$(call link_module,$^,$(LUAJIT_LIB))

# ---- system packages (Debian 12); quiet when nothing is missing ----
PKGS_BUILD = gcc make libc6-dev lua5.4 liblua5.4-dev luajit2 libluajit2-5.1-dev libopenblas-dev
PKGS_TEST  = $(PKGS_BUILD) lua-busted clang libclang-rt-14-dev luarocks nginx libnginx-mod-http-lua \
             love xvfb xauth curl
define install_missing
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "moonlm: installing $$(echo $$missing)"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit 1; \
	fi
endef

deps-build:
	$(call install_missing,$(PKGS_BUILD))
# node and npm (for the openai client in the server specs) may come from elsewhere than
# Debian (nodesource ships npm inside its nodejs): install Debian's only when npm is missing
deps:
	$(call install_missing,$(PKGS_TEST))
	@command -v npm >/dev/null 2>&1 || { echo "moonlm: installing nodejs npm"; SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }

# ---- the two README commands ----
demo: deps-build
	@$(MAKE) --no-print-directory all
	@LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="$(BUILD)/5.4/?.so;;" lua5.4 examples/story.lua "$(MODEL)"

test: deps
	@$(MAKE) --no-print-directory all
	@SHARED="$(SHARED)" BUILD="$(BUILD)" SAN="$(SAN)" sh tools/runspecs.sh

$(BUILD)/bench/peak: bench/peak.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -Wall -fopenmp $< -o $@

bench: deps-build
	@$(MAKE) --no-print-directory all $(BUILD)/bench/peak
	@BUILD=$(BUILD) LUA_PATH="lua/?.lua;lua/?/init.lua;bench/?.lua;;" LUA_CPATH="$(BUILD)/5.4/?.so;;" lua5.4 bench/run.lua
	@if [ -z "$(BENCH)" ] || [ "$(BENCH)" = serve ]; then \
	  BUILD=$(BUILD) LUA_PATH="lua/?.lua;lua/?/init.lua;bench/?.lua;;" LUA_CPATH="$(BUILD)/5.1/?.so;;" luajit bench/serve.lua; fi

# ---- make serve: the OpenAI-compatible server (examples/openresty) in the foreground ----
#   make serve [PORT=8080] [MODEL=path.gguf] [THREADS=n]; Ctrl-C stops it
PORT ?= 8080
.PHONY: serve
serve:
	$(call install_missing,$(PKGS_BUILD) nginx libnginx-mod-http-lua curl)
	@$(MAKE) --no-print-directory all
	@LUA_PATH="lua/?.lua;;" luajit -e 'require("moonlm.resty.launch").serve{ port = $(PORT), model = "$(abspath $(MODEL))", threads = "$(THREADS)", lib_dir = "$(BUILD)/5.1" }'

# ---- install (luarocks make uses the same targets) ----
LUA_LIBDIR = $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_SHAREDIR = $(PREFIX)/share/lua/$(LUA_VERSION)
# the Lua files, subfolders included (moonlm/resty/, ...)
define install_lua
	cd lua && find moonlm -name '*.lua' | while read f; do install -D -m 644 "$$f" "$(1)/$$f"; done
endef

install: all
	install -d $(DESTDIR)$(LUA_LIBDIR)/moonlm $(DESTDIR)$(LUA_SHAREDIR)/moonlm
	install -m 755 $(BUILD)/$(LUA_VERSION)/moonlm/core.so $(DESTDIR)$(LUA_LIBDIR)/moonlm/core.so
	$(call install_lua,$(DESTDIR)$(LUA_SHAREDIR))

# ---- luarocks make (rockspec/moonlm-scm-1.rockspec): one module for the Lua luarocks targets ----
# `make rock` builds with JOBS jobs like any target (above). ROCK_CFLAGS are luarocks' CFLAGS,
# added to ours. The binding's objects and the module are kept per Lua header directory
# (ROCK_LUA_INC, given to both targets), so a build for one ABI never installs the module
# built for the other. For the two ABIs this Makefile knows, the module gets the same
# --no-undefined link check as `make`'s.
ROCK_LUA_INC ?= $(LUA54_INC)
ROCK_DIR = rock$(subst /,_,$(ROCK_LUA_INC))
ROCK_OBJ = $(BUILD)/obj-$(ROCK_DIR)
ROCK_MOD = $(BUILD)/$(ROCK_DIR)/moonlm/core.so
ROCK_LUA_LIB ?= $(if $(filter $(LUA54_INC),$(ROCK_LUA_INC)),$(LUA54_LIB),$(if $(filter $(LUAJIT_INC),$(ROCK_LUA_INC)),$(LUAJIT_LIB)))
BINDROCK = $(addprefix $(ROCK_OBJ)/,$(addsuffix .o,$(BIND)))
CFLAGS += $(ROCK_CFLAGS)
$(ROCK_OBJ)/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPFLAGS) -I$(ROCK_LUA_INC) -c $< -o $@
rock: $(ROCK_MOD)
$(ROCK_MOD): $(CORE_OBJS) $(BINDROCK)
ifneq ($(ROCK_LUA_LIB),)
	$(call link_module,$^,$(ROCK_LUA_LIB))
else
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LIBS)
endif
rock-install:
	install -d $(ROCK_LIBDIR)/moonlm $(ROCK_LUADIR)/moonlm
	install -m 755 $(ROCK_MOD) $(ROCK_LIBDIR)/moonlm/core.so
	$(call install_lua,$(ROCK_LUADIR))

# ---- C self-tests (spec/selftest_spec.lua), with ASan and UBSan: tools/gguf_check.c (the GGUF
# reader and writer) and tools/quant_check.c (the block formats against ggml's bytes) ----
SELFTESTS = gguf_check quant_check
SELFTEST_CORE = src/gguf.c src/error.c src/dtype.c src/quant.c src/tensor.c src/threads.c src/matmul.c \
                src/kernels/ref.c src/kernels/pack.c src/kernels/dispatch.c
selftest: $(addprefix $(BUILD)/selftest/,$(SELFTESTS))
$(BUILD)/selftest/%: tools/%.c $(SELFTEST_CORE) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -g -O1 -fopenmp -fsanitize=address,undefined -fno-sanitize-recover=undefined -D_GNU_SOURCE \
	  $(WARN) -Isrc $< $(SELFTEST_CORE) -o $@ $(LIBS)

# ---- fuzzing ----
FUZZ_FLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -std=c11 -D_GNU_SOURCE -Isrc
FUZZ_CORE = src/gguf.c src/error.c src/dtype.c src/quant.c
fuzz: $(BUILD)/fuzz/gguf $(BUILD)/fuzz/tokenizer $(BUILD)/fuzz/schema $(BUILD)/fuzz/grammar
$(BUILD)/fuzz/gguf: fuzz/gguf.c $(FUZZ_CORE) $(HDRS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) fuzz/gguf.c $(FUZZ_CORE) -o $@
TOK_SRCS = src/tokenizer.c src/tokenize.c src/tokenizer_spm.c src/tokenizer_bpe.c src/tokenizer_wpm.c \
           src/tokenizer_decode.c src/unicode.c
$(BUILD)/fuzz/tokenizer: fuzz/tokenizer.c $(FUZZ_CORE) $(TOK_SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -DML_TOK_CACHE_MIN_TEXT=1 fuzz/tokenizer.c $(FUZZ_CORE) $(TOK_SRCS) -o $@

SCHEMA_C = src/json.c src/grammar_schema.c src/grammar_schema_leaf.c src/error.c
$(BUILD)/fuzz/schema: fuzz/schema.c $(SCHEMA_C) $(HDRS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) fuzz/schema.c $(SCHEMA_C) -o $@

GRAMMAR_C = src/grammar_gbnf.c src/grammar_regex.c src/grammar_compile.c src/grammar_dfa.c src/grammar_vocab.c src/grammar_match.c \
            src/grammar_mask.c $(FUZZ_CORE) $(TOK_SRCS)
$(BUILD)/fuzz/grammar: fuzz/grammar.c $(GRAMMAR_C) $(HDRS)
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) fuzz/grammar.c $(GRAMMAR_C) -o $@

# the template renderer is Lua: fuzz/template.lua generates and mutates templates (both
# interpreters, FUZZ_SECONDS each; failing sources go to /tmp/moonlm-template-fuzz)
FUZZ_SECONDS ?= 60
# a GGUF campaign of FUZZ_SECONDS: new inputs go to a scratch corpus (FUZZ_CORPUS), never
# to the seeds; a crash is written to the current directory as crash-<sha1>
FUZZ_CORPUS ?= /tmp/moonlm-fuzz-gguf
.PHONY: fuzz-gguf
fuzz-gguf: $(BUILD)/fuzz/gguf
	@mkdir -p $(FUZZ_CORPUS)
	$(BUILD)/fuzz/gguf -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=16384 -max_total_time=$(FUZZ_SECONDS) \
	  -print_final_stats=1 $(FUZZ_CORPUS) fuzz/seeds/gguf $(wildcard $(SHARED)/tokenizer)
# the JSON Schema compiler and the grammar engine (GBNF parser, compiler, matcher, masks),
# FUZZ_SECONDS each, new inputs to scratch corpora beside FUZZ_CORPUS
.PHONY: fuzz-schema fuzz-grammar
fuzz-schema: $(BUILD)/fuzz/schema
	@mkdir -p $(FUZZ_CORPUS)-schema
	$(BUILD)/fuzz/schema -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=16384 -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	  $(FUZZ_CORPUS)-schema fuzz/seeds/schema
fuzz-grammar: $(BUILD)/fuzz/grammar
	@mkdir -p $(FUZZ_CORPUS)-grammar
	$(BUILD)/fuzz/grammar -rss_limit_mb=2048 -max_len=4096 -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	  $(FUZZ_CORPUS)-grammar fuzz/seeds/grammar
.PHONY: fuzz-template
fuzz-template:
	@MOONLM_SHARED="$(SHARED)" lua5.4 fuzz/template.lua $(FUZZ_SECONDS)
	@MOONLM_SHARED="$(SHARED)" luajit fuzz/template.lua $(FUZZ_SECONDS)

# hostile model files through lm.load and a few tokens of generation (fuzz/loader.lua),
# FUZZ_SECONDS under Lua 5.4; SAN=1 runs it on the sanitizer build
SAN_PRELOAD = LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
              ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
.PHONY: fuzz-loader
fuzz-loader: $(MOD54)
	@MOONLM_SHARED="$(SHARED)" LUA_CPATH="$(BUILD)/5.4/?.so;;" $(if $(filter 1,$(SAN)),$(SAN_PRELOAD)) \
	  lua5.4 fuzz/loader.lua $(FUZZ_SECONDS)

clean:
	rm -rf build build-san
