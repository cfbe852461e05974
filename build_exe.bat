@echo off
rem Build eco_train.exe on Windows (twin of build_exe.sh; the seed's official path):
rem   0. VS 2026 toolchain: VsDevCmd.bat (ECO_TRAIN_VSDEVCMD, else the seed's Insiders path, else
rem      vswhere), --allow-unsupported-compiler exported for nvcc, libtorch looked up and logged
rem   1. venv .venv (Python 3.13 from PYTHON, else the py launcher), upgrade pip
rem   2. install the strict lock (torch's CUDA 12.8 wheels come from PyTorch's index)
rem   3. scripts\verify_runtime.py: stop here if anything is missing or broken
rem   4. PyInstaller with eco_train.spec -> dist\eco_train\eco_train.exe
rem   5. smoke test: --version, --help, a bad flag (exit code 2), Python mode, 3 CPU training steps
rem
rem   build_exe.bat                 build and smoke-test
rem   build_exe.bat --smoke-only    only smoke-test the existing dist\eco_train\eco_train.exe
rem   set PYTHON=C:\Python313\python.exe      choose the interpreter for the venv
rem   set ECO_TRAIN_VSDEVCMD=D:\VS\Common7\Tools\VsDevCmd.bat   choose the toolchain
rem   set ECO_TRAIN_LIBTORCH=D:\libtorch                          choose libtorch
rem Re-running is incremental: the venv is kept, pip skips what is already installed, PyInstaller
rem reuses its build\ cache.
setlocal EnableExtensions EnableDelayedExpansion
cd /d "%~dp0"
set "EXE=%~dp0dist\eco_train\eco_train.exe"
set "LOCK=requirements-py313-cu128.txt"
set "TORCH_INDEX=https://download.pytorch.org/whl/cu128"
if /i "%~1"=="--smoke-only" goto :smoke

rem ---------------------------------------------------------------------------------------------
rem 0. Toolchain (the runtime does the same in training\toolchain.py and logs the same fact)
set "VS_READY=0"
set "VSDEVCMD="
if defined ECO_TRAIN_VSDEVCMD (
    set "VSDEVCMD=!ECO_TRAIN_VSDEVCMD!"
    goto :have_vsdevcmd
)
set "SEED_VSDEVCMD=C:\Program Files\Microsoft Visual Studio\18\Insiders\Common7\Tools\VsDevCmd.bat"
if exist "%SEED_VSDEVCMD%" (
    set "VSDEVCMD=!SEED_VSDEVCMD!"
    goto :have_vsdevcmd
)
set "VSWHERE=%ProgramFiles(x86)%\Microsoft Visual Studio\Installer\vswhere.exe"
if not exist "%VSWHERE%" goto :have_vsdevcmd
rem The doubled outer quotes survive cmd /c's quote stripping ("Program Files (x86)" has parentheses).
for /f "usebackq delims=" %%i in (`""%VSWHERE%" -latest -prerelease -products * -requires Microsoft.VisualStudio.Component.VC.Tools.x86.x64 -property installationPath"`) do (
    if exist "%%i\Common7\Tools\VsDevCmd.bat" set "VSDEVCMD=%%i\Common7\Tools\VsDevCmd.bat"
)
:have_vsdevcmd
where cl.exe >nul 2>&1
if not errorlevel 1 (
    set "VS_READY=1"
    goto :toolchain_done
)
if not defined VSDEVCMD goto :toolchain_done
if not exist "%VSDEVCMD%" (
    echo [build_exe] VsDevCmd.bat not found at "%VSDEVCMD%"
    goto :toolchain_done
)
echo [build_exe] loading the Visual Studio toolchain from "%VSDEVCMD%"
call "%VSDEVCMD%" -no_logo -arch=x64 -host_arch=x64 >nul
where cl.exe >nul 2>&1
if not errorlevel 1 set "VS_READY=1"
:toolchain_done
echo [sigma] vs2026_toolchain_ready=%VS_READY%
if "%VS_READY%"=="0" echo [build_exe] WARNING: no MSVC compiler; Triton kernels and torch.compile will not work. Fix: install Visual Studio 2026 with "Desktop development with C++" or set ECO_TRAIN_VSDEVCMD.
rem CUDA 12.8's nvcc does not know VS 2026's compiler version yet.
set "TORCH_NVCC_FLAGS=%TORCH_NVCC_FLAGS% --allow-unsupported-compiler"
set "CUDAFLAGS=%CUDAFLAGS% --allow-unsupported-compiler"
set "CMAKE_CUDA_FLAGS=%CMAKE_CUDA_FLAGS% --allow-unsupported-compiler"

set "LIBTORCH="
if defined ECO_TRAIN_LIBTORCH (
    if exist "!ECO_TRAIN_LIBTORCH!\" set "LIBTORCH=!ECO_TRAIN_LIBTORCH!"
    goto :libtorch_done
)
if exist "C:\test5\my_eco_llm\libtorch\" (
    set "LIBTORCH=C:\test5\my_eco_llm\libtorch"
    goto :libtorch_done
)
if exist "C:\test5\libtorch\" set "LIBTORCH=C:\test5\libtorch"
:libtorch_done
if defined LIBTORCH (echo [sigma] libtorch_path=!LIBTORCH!) else (echo [sigma] libtorch_path=null)

rem ---------------------------------------------------------------------------------------------
rem 1. venv + pip
if exist ".venv\Scripts\python.exe" goto :venv_ready
echo [build_exe] 1/5 creating .venv
if defined PYTHON (
    "%PYTHON%" -m venv .venv
) else (
    py -3.13 -m venv .venv
)
if errorlevel 1 (
    echo [build_exe] error: could not create .venv with Python 3.13. Fix: install Python 3.13 from python.org ^(with the py launcher^) or set PYTHON=C:\path\to\python.exe
    exit /b 1
)
:venv_ready
set "PY=%~dp0.venv\Scripts\python.exe"
"%PY%" -c "import sys; assert sys.version_info[:2] == (3, 13), sys.version" || (
    echo [build_exe] error: .venv is not Python 3.13. Fix: delete .venv and rerun build_exe.bat
    exit /b 1
)
echo [build_exe] 1/5 upgrading pip
"%PY%" -m pip install --quiet --upgrade pip || goto :fail

rem 2. The strict lock. PyPI's Windows torch wheels are CPU-only: the extra index gives 2.10.0+cu128.
echo [build_exe] 2/5 installing %LOCK%
"%PY%" -m pip install --quiet -r "%LOCK%" --extra-index-url "%TORCH_INDEX%" || goto :fail
"%PY%" -m pip install --quiet --no-deps --no-build-isolation -e . || goto :fail

rem 3. Fail fast on a broken runtime.
echo [build_exe] 3/5 runtime verifier
"%PY%" scripts\verify_runtime.py || goto :fail

rem 4. The binary.
echo [build_exe] 4/5 PyInstaller (several minutes)
"%PY%" -m PyInstaller --noconfirm --log-level WARN eco_train.spec || goto :fail

rem ---------------------------------------------------------------------------------------------
rem 5. Smoke test, from a temporary folder.
:smoke
echo [build_exe] 5/5 smoke test of "%EXE%"
if not exist "%EXE%" (
    echo [build_exe] error: "%EXE%" does not exist. Fix: run build_exe.bat without --smoke-only
    exit /b 1
)
set "SMOKE=%TEMP%\eco_train_smoke_%RANDOM%"
mkdir "%SMOKE%" || goto :fail
pushd "%SMOKE%"
"%EXE%" --version > version.txt || goto :smoke_fail
findstr /b /c:"eco_train " version.txt >nul || goto :smoke_fail
"%EXE%" --help > help.txt || goto :smoke_fail
findstr /c:"--model-preset" help.txt >nul || goto :smoke_fail
"%EXE%" --steps zero > bad_out.txt 2> bad_err.txt
if not "%ERRORLEVEL%"=="2" goto :smoke_fail
findstr /c:"argument --steps" bad_err.txt >nul || goto :smoke_fail
"%EXE%" -I -c "import math, json; print(json.dumps(math.isqrt(49)))" > py.txt || goto :smoke_fail
findstr /x /c:"7" py.txt >nul || goto :smoke_fail
"%EXE%" --device cpu --model-preset tiny --steps 3 --seq-len 32 --batch-size 2 --vocab-size 512 --tokenizer-train-chars 20000 --log-every 1 --eval-every 3 --eval-batches 1 --sample-every 3 --output-dir run --checkpoint-dir ck > train.log 2>&1 || goto :smoke_fail
findstr /c:"\"event\": \"end\"" run\metrics.jsonl >nul || goto :smoke_fail
popd
rmdir /s /q "%SMOKE%"
echo [build_exe] ok: "%EXE%" passed the smoke test
exit /b 0

:smoke_fail
echo [build_exe] SMOKE FAILED; the outputs are in %SMOKE%
popd
exit /b 1

:fail
echo [build_exe] FAILED (exit code %ERRORLEVEL%); see the messages above
exit /b 1
