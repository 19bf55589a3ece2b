#!/bin/bash
# chat-v2's k-fold on news categories, one step at a time, so two steps can share the 2 cores and a session can stop
# between steps (rule, written before any fold trained: bench/results/reading_rules/decision_rule_folds_chat.txt).
#
#   bench/folds_chat.sh chat K     train chat-v2's recipe without fold K's HuffPost authors
#   bench/folds_chat.sh mt K       train the card's MT-LoRA control on the same users
#                                  and keep it: bench/assets/folds_chat/mt_foldK/ (GGUF + run record, ~1 MB, commit it)
#   bench/folds_chat.sh report K   score fold K's test authors on news categories (own, shuffled, null profile,
#                                  MT-LoRA, base, prior) and keep the answers: bench/results/folds_chat/foldK/
#                                  (llama.cpp at THREADS=1 by default; THREADS=2 only on an otherwise idle machine)
#
# Measured here (2-core AVX-512 EPYC), 1,000 steps: chat ~8.2 s/step at 1 thread beside a control (~140 min), ~4.3 s/step
# alone at 2 threads (~75 min); the control ~4.1 s/step at 1 thread beside a chat fold (~70 min); each ~5-8 min of
# profile building first. TRAIN_THREADS=2 trains at 2 threads (a machine setting, not the recipe's; it also applies
# when a killed run resumes). Runs go to runs/folds_chat/ (git ignores runs/: a later session retrains what it lost,
# but not a kept control or kept answers). A finished step is skipped; a killed training resumes from its last
# checkpoint. Edit this file only by replacing it (a running step reads it as it goes). Pool the kept folds with
#   python -m bench.panels --task news_category --splits random --out bench/results/folds_chat --note '...' \
#       chat_v2=bench/results/folds_chat/fold0,bench/results/folds_chat/fold1,...
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:-}; K=${2:-}
[[ $step =~ ^(chat|mt|report)$ && $K =~ ^[0-4]$ ]] || { echo "usage: $0 chat|mt|report K (K in 0..4)" >&2; exit 2; }
PY=.venv/bin/python; F=runs/folds_chat; C=$F/chat_fold$K; M=$F/mt_fold$K
KEPT_MT=bench/assets/folds_chat/mt_fold$K; KEPT_REPORT=bench/results/folds_chat/fold$K
mkdir -p $F
exec 9>"$F/.lock_${step}_$K"; flock -n 9 || { echo "$step $K is already running" >&2; exit 0; }
fold() {  # $1 recipe, $2 out: the fold's splits and the recipe's copy (same users for the same fold and seed)
  [ -f "$2/config.toml" ] || $PY -m p2p_edge.lab.folds --config "$1" --datasets huffpost_news --folds 5 --fold $K \
      --seed 0 --threads 1 --out "$2"
  [ -z "${TRAIN_THREADS:-}" ] || sed -i "s/^threads = .*/threads = $TRAIN_THREADS/" "$2/config.toml"
}
case $step in
  chat) fold configs/train_chat_kl.toml $C
        [ -f $C/p2p.done ] || { .venv/bin/p2p-edge train --config $C/config.toml >> $C/train.log 2>&1 && touch $C/p2p.done; } ;;
  mt)   [ -f $KEPT_MT/mt_lora.gguf ] && { echo "fold $K's control is kept in $KEPT_MT"; exit 0; }
        fold configs/train_mt_lora.toml $M
        [ -f $M/mt.done ] || { .venv/bin/p2p-edge train --config $M/config.toml >> $M/train.log 2>&1 && touch $M/mt.done; }
        $PY -m p2p_edge.lab.keep_control --mt-lora $M/mt_lora/last.pt --out $KEPT_MT ;;
  report)
        [ -f $KEPT_REPORT/answers_random.json ] && { echo "fold $K is scored: $KEPT_REPORT"; exit 0; }
        until [ -f $C/p2p.done ] && [ -f $KEPT_MT/mt_lora.gguf ]; do sleep 60; done   # p2p.done: its config is there
        printf 'extends = "config.toml"\ntasks = ["news_category"]\n' > $C/config_report.toml
        [ -f $C/report.done ] || { $PY -m p2p_edge.lab.report --config $C/config_report.toml --p2p $C/p2p/last.pt \
            --mt-lora $KEPT_MT/mt_lora.gguf --null-profile --threads ${THREADS:-1} --out $C/report >> $C/report.log 2>&1 \
            && touch $C/report.done; }
        mkdir -p $KEPT_REPORT
        cp $C/report/answers_*.json $C/report/metrics.json $C/report/report.md $KEPT_REPORT/
        cp $C/p2p/train_log.jsonl $KEPT_REPORT/train_log_chat.jsonl
        echo "fold $K scored: $KEPT_REPORT" ;;
esac
